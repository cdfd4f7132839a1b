"""The training loop every editor shares: same prompts, same losses, same stopping rule.

loss = CE(target tokens) + suppress * unlikelihood(old object's first token)
       + kl * KL(original || current) on retain prompts' next-token distributions
       + leak * mean hinge(log P_current - log P_original) of the targets' first tokens there.
Training stops when every target token is the argmax with at least `margin` logits to spare
(and the old object's first token is `old_gap` logits below the target's), not after a fixed
number of steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ...core.config import CheckedConfig, FieldChecks
from ...core.forward import hidden_states, input_device
from ...core.head import HeadReductions
from ...core.tokens import TeacherForcedBatch, build_batch
from .frozen_context import build_training_rows
from .retain import RetainSet, ShortlistedReference
from .shortlisted_head import ShortlistedHead


@dataclass
class StageConfig(CheckedConfig):
    """One training stage (unlearn or learn) of the IA3 editors; `validate` runs at construction."""

    lr: float = field(default=2e-2, metadata={"help": "Adam learning rate of the IA3 vectors"})
    max_steps: int = field(default=60, metadata={"help": "the stage stops after this many steps even if the targets are not reached"})
    min_steps: int = field(default=1, metadata={"help": "steps taken before the stopping rule is checked, in [0, max_steps]"})
    margin: float = field(default=2.0, metadata={"help": "stop once every target token is the argmax by this many logits"})
    # The old object's first token must also sit this many logits below the target's first token.
    # A gap, not a rank: a rank test kept training (and drifting) long after the old object was
    # improbable (evidence: docs/tuning.md).
    old_gap: float = field(default=3.0, metadata={"help": "and the old object's first token sits this many logits below the target's"})
    kl_weight: float = field(default=2.0, metadata={"help": "weight of the KL to the unedited model's next tokens on the retain prompts"})
    # Penalty on any rise of the targets' first tokens' log-probability on the retain prompts
    # (hinge on current - original): the KL term barely notices P(new) going from 1e-4 to 1e-2
    # on a neighbour, yet that is what lets the new object overtake a neighbour's true answer.
    # Off by default: it trades held-out paraphrases for neighbourhood specificity (evidence:
    # docs/tuning.md).
    leak_weight: float = field(default=0.0, metadata={"help": "weight of the hinge on any rise of the targets' first tokens on the retain prompts"})
    suppress_weight: float = field(default=1.0, metadata={"help": "weight of the unlikelihood of the old object's first token"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    # Adam's moment decay rates. No momentum (beta1 0, i.e. RMSprop with bias correction): the
    # KL term pulls against the target and momentum carried the stage into oscillations of
    # several steps; without it a stage takes fewer steps and spares more neighbours, at a small
    # cost in held-out paraphrases (evidence: docs/tuning.md).
    beta1: float = field(default=0.0, metadata={"help": "Adam's first-moment decay rate, in [0, 1) (0: no momentum)"})
    beta2: float = field(default=0.99, metadata={"help": "Adam's second-moment decay rate, in [0, 1)"})
    # Train only this share of each vector's units: those with the largest first-step gradient.
    # Adam moves every coordinate by ~lr regardless of its gradient, so without this mask an IA3
    # vector drifts everywhere and drags unrelated facts along (None trains all units).
    unit_fraction: float | None = field(default=None, metadata={"help": "train only this share of each vector's units, those of largest first-step gradient (null: all)"})
    # Rotating retain prompts per evaluation of the retain terms, taken in turn (the pinned
    # same-template neighbours are in every one), and how often those terms are evaluated: every
    # `retain_every` steps, their gradient extrapolated in between (RetainTerm). Their forward
    # and backward is most of a step: fewer, rarer evaluations take a few more, far cheaper steps
    # at the same quality (evidence: docs/tuning.md).
    retain_batch: int = field(default=8, metadata={"help": "rotating retain prompts per evaluation of the retain terms"})
    retain_every: int = field(default=2, metadata={"help": "evaluate the retain terms every this many steps (their gradient extrapolated between)"})
    # LM-head shortlist (ShortlistedHead; RetainSet.shortlisted): most steps compute the logits of
    # each row's `shortlist_top_k` best tokens only, full-vocabulary passes every
    # `full_vocab_every` steps and whenever the targets look reached. None: every step computes
    # all 262k logits.
    shortlist_top_k: int | None = field(default=256, metadata={"help": "logits computed per row on most steps (null: the full vocabulary every step)"})
    full_vocab_every: int = field(default=8, metadata={"help": "a full-vocabulary step every this many steps (and when the targets look reached)"})
    shortlist_tail_sample: int = field(default=2048, metadata={"help": "tokens whose logits estimate the log-sum-exp of those off the shortlist"})
    # Run each training prompt's leading context (the model-generated prefix; else the BOS) once
    # per stage and reuse its KV cache, detached, so that a step runs only the prompt and target
    # tokens (FrozenContextBatch).
    frozen_context: bool = field(default=True, metadata={"help": "run each prompt's leading context once per stage and reuse its KV cache"})
    # The attention kernel while the stage trains (any `attn_implementation` transformers knows;
    # None keeps the model's), restored afterwards; evaluation keeps the model's. Eager because
    # SDPA's CPU backward is slow for these few-token rows; quality is the same within rounding
    # (evidence: docs/tuning.md, docs/speed.md).
    attention: str | None = field(default="eager", metadata={"help": "attention kernel while the stage trains (null: the model's)"})
    # Cross-entropy only on the target tokens whose margin is below `margin + focus_slack` (None:
    # on every token). Not the default: it trades forgetting for speed (evidence: docs/tuning.md).
    focus_slack: float | None = field(default=None, metadata={"help": "cross-entropy only on target tokens below margin + this (null: on every token)"})

    def validate(self, section: str = "stage") -> None:
        """Raise a ValueError naming the first field (as `section.field`; an editor's stages are
        `editor.unlearn` and `editor.learn`) whose value cannot train."""
        check = FieldChecks(self, section)
        check.number("lr", 0, low_open=True)
        for name in ("max_steps", "retain_batch", "retain_every", "full_vocab_every", "shortlist_tail_sample"):
            check.integer(name, 1)
        check.integer("min_steps", 0)
        if self.min_steps > self.max_steps:
            check.fail("min_steps", f"must be in [0, max_steps], got {self.min_steps}")
        for name in ("margin", "old_gap", "kl_weight", "leak_weight", "suppress_weight", "weight_decay"):
            check.number(name, 0)
        for name in ("beta1", "beta2"):
            check.number(name, 0, 1, high_open=True)
        check.number("unit_fraction", 0, 1, low_open=True, optional=True)
        check.integer("shortlist_top_k", 1, optional=True)
        check.flag("frozen_context")
        check.text("attention", optional=True)
        check.number("focus_slack", 0, optional=True)


@dataclass
class StageLog:
    name: str
    steps: int = 0
    seconds: float = 0.0
    converged: bool = False
    full_vocab_passes: int = 0  # of the training rows' LM head (the retain set's not counted)
    losses: list[float] = field(default_factory=list)
    trainable_parameters: int = 0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["final_loss"] = self.losses[-1] if self.losses else None
        data.pop("losses")
        return data


def restrict_to_top_units(params: Sequence[nn.Parameter], fraction: float) -> None:
    """Mask every later gradient to the units with the largest current |grad| (per vector)."""
    for param in params:
        if param.grad is None:
            continue
        magnitude = param.grad.detach().abs().flatten()
        live = magnitude[magnitude > 0]
        if live.numel() == 0:
            continue
        keep = max(1, int(round(fraction * live.numel())))
        threshold = live.topk(keep).values[-1]
        mask = (param.grad.detach().abs() >= threshold).to(param.grad.dtype)
        param.grad.mul_(mask)
        param.register_hook(lambda grad, mask=mask: grad * mask)


def targets_reached(head: HeadReductions, first: torch.Tensor, suppress: bool, config: StageConfig) -> bool:
    """Every target token the argmax by `margin`, and the old object's first token `old_gap` below
    the target's first token."""
    reached = bool((head.margins(0) >= config.margin).all())
    if suppress:
        gap = head.picked[first, 0].detach() - head.picked[first, 1].detach()
        reached = reached and bool((gap >= config.old_gap).all())
    return reached


def target_loss(head: HeadReductions, config: StageConfig) -> torch.Tensor:
    """Mean cross-entropy of the target tokens; with `focus_slack`, of those still short of
    `margin + focus_slack` only, so the step goes where the stopping rule is not yet met."""
    token_ce = head.lse - head.picked[:, 0]  # (N,)
    if config.focus_slack is None:
        return token_ce.mean()
    lagging = (head.margins(0) < config.margin + config.focus_slack).to(token_ce.dtype)
    return (token_ce * lagging).sum() / lagging.sum().clamp(min=1)


class RetainTerm:
    """The retain terms (KL, leak) of every step, their gradient recomputed every
    `config.retain_every` steps (lazy regularization, as StyleGAN2 does for its R1 term): the
    retain forward and backward are most of a step's cost. In between, the gradient is
    extrapolated linearly from its last two evaluations; plain reuse lags behind the moving
    params and makes the stage oscillate (evidence: docs/tuning.md)."""

    def __init__(self, retain: RetainSet | None, config: StageConfig, params: Sequence[nn.Parameter],
                 watched: torch.Tensor | None):
        self.retain, self.config, self.params, self.watched = retain, config, list(params), watched
        self.active = retain is not None and bool(config.kl_weight or config.leak_weight)
        self.gradient: list[torch.Tensor | None] | None = None  # at the last evaluation
        self.previous: list[torch.Tensor | None] | None = None  # at the one before
        self.span = 1  # steps between those two evaluations
        self.value = 0.0
        self.age = 0  # steps since the last evaluation
        self.evaluations = 0
        self.reference: ShortlistedReference | None = None  # built at the first evaluation

    def known_zero(self) -> None:
        """At the reference model both terms are zero with zero gradient: no pass needed."""
        self.gradient, self.value, self.age = [None] * len(self.params), 0.0, 0

    def _evaluate(self, model: nn.Module) -> None:
        rows = self.retain.rows_for_step(self.evaluations, self.config.retain_batch)
        if self.config.shortlist_top_k and self.reference is None:
            self.reference = self.retain.shortlisted(model, self.config.shortlist_top_k, self.watched,
                                                     self.config.shortlist_tail_sample)
        kl, leak = self.retain.kl_and_leak(model, rows, self.watched, self.reference)
        term = self.config.kl_weight * kl + self.config.leak_weight * leak
        # Tensor hooks on the params (head masks, unit masks) apply to autograd.grad too.
        gradient = list(torch.autograd.grad(term, self.params, allow_unused=True))
        self.previous, self.span = self.gradient, max(1, self.age)
        self.gradient, self.value, self.age = gradient, float(term.detach()), 0
        self.evaluations += 1

    def _estimate(self) -> list[torch.Tensor | None]:
        if self.age == 0 or self.previous is None:
            return self.gradient
        ahead = self.age / self.span
        out = []
        for now, before in zip(self.gradient, self.previous, strict=True):
            if now is None:
                out.append(None)
            else:
                out.append(now + ahead * (now - before) if before is not None else now * (1 + ahead))
        return out

    def add_gradient(self, model: nn.Module) -> float:
        """Add the retain terms' gradient to each param's .grad; returns their (last) value."""
        if not self.active:
            return 0.0
        if self.gradient is None or self.age >= max(1, self.config.retain_every):
            self._evaluate(model)
        for param, grad in zip(self.params, self._estimate(), strict=True):
            if grad is None:
                continue
            if param.grad is None:
                param.grad = grad.clone()
            else:
                param.grad.add_(grad)
        self.age += 1
        return self.value


@contextmanager
def attention_kernel(model: nn.Module, kernel: str | None):
    """Run the block with the model's attention on `kernel` (None: as it is), then restore it."""
    previous = getattr(model.config, "_attn_implementation", None)
    if kernel is None or kernel == previous:
        yield
        return
    model.set_attn_implementation(kernel)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@dataclass
class StageInputs:
    """What one stage trains: its rows (prompts and targets), its params, and what it keeps still."""

    prompts: Sequence[str]
    targets: Sequence[str]  # per prompt, the text the stage teaches to follow it
    params: Sequence[nn.Parameter]  # already the only ones requiring grad
    retain: RetainSet | None = None  # the prompts whose next-token distribution the KL and leak terms hold
    # the old object's first token, pushed down (per prompt when many facts train together; None:
    # no unlikelihood term)
    old_token: int | Sequence[int] | None = None
    contexts: Sequence[str] | None = None  # per prompt, its leading text `config.frozen_context` runs once
    # The model is the one `retain` was recorded on, so at step 0 the retain terms are zero with
    # zero gradient, and their forward pass (most of a step) is skipped.
    starts_at_reference: bool = False

    @classmethod
    def from_context(cls, context, targets: Sequence[str], params: Sequence[nn.Parameter],
                     starts_at_reference: bool = False) -> StageInputs:
        """A stage on an editor's TrainingContext: its prompts, retain set, old token and contexts."""
        return cls(context.prompts, targets, params, context.retain, context.old_token, context.contexts,
                   starts_at_reference)


def training_rows(model: nn.Module, tokenizer, inputs: StageInputs, config: StageConfig,
                  device: torch.device) -> tuple[TeacherForcedBatch, Callable[[nn.Module], torch.Tensor]]:
    """The stage's teacher-forced batch and the forward giving its (B, T, H) final hidden states:
    with `config.frozen_context`, the live tokens after each prompt's context, run once now, in
    length buckets where the rows' lengths differ widely (a chat model's chat-rendered prompts)."""
    if config.frozen_context:
        rows = build_training_rows(tokenizer, inputs.prompts, inputs.contexts, inputs.targets, device)
        rows.record(model)
        return rows.live, rows.hidden
    batch = build_batch(tokenizer, inputs.prompts, inputs.targets, device)
    return batch, lambda m: hidden_states(m, batch.input_ids, batch.attention_mask)


def old_tokens(old_token: int | Sequence[int], owners: torch.Tensor) -> torch.Tensor:
    """(N,) the old object's first token at each target position (`owners`: its prompt)."""
    if isinstance(old_token, int):
        return torch.full_like(owners, old_token)
    return torch.as_tensor(list(old_token), dtype=owners.dtype, device=owners.device)[owners]


def unlikelihood_loss(head: HeadReductions, first: torch.Tensor) -> torch.Tensor:
    """Mean -log(1 - P(old object's first token)) where the targets' first tokens are predicted."""
    p_old = (head.picked[first, 1] - head.lse[first]).exp()
    return -torch.log1p(-p_old.clamp(max=1 - 1e-6)).mean()


def rows_loss(head: HeadReductions, first: torch.Tensor, suppress: bool, config: StageConfig) -> torch.Tensor:
    """The training rows' loss: the targets' cross-entropy, plus the weighted unlikelihood term."""
    loss = target_loss(head, config)
    if suppress and config.suppress_weight:
        loss = loss + config.suppress_weight * unlikelihood_loss(head, first)
    return loss


def may_stop(reached: bool, step: int, config: StageConfig) -> bool:
    return (reached and step >= config.min_steps) or step == config.max_steps


def take_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, retain_term: RetainTerm, model: nn.Module,
              params: Sequence[nn.Parameter], step: int, config: StageConfig) -> float:
    """One optimizer step on `loss` plus the retain terms; returns the step's total loss."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    retained = retain_term.add_gradient(model)
    if step == 0 and config.unit_fraction is not None:
        restrict_to_top_units(params, config.unit_fraction)
    optimizer.step()
    return float(loss.detach()) + retained


def train_stage(name: str, model: nn.Module, tokenizer, inputs: StageInputs, config: StageConfig,
                progress=None) -> StageLog:
    """Train `inputs.params` until the targets are reached (or `config.max_steps`);
    `progress(name, step, loss)` after each step."""
    params = inputs.params
    suppress = inputs.old_token is not None
    with attention_kernel(model, config.attention):
        start = time.perf_counter()
        log = StageLog(name, trainable_parameters=sum(p.numel() for p in params))
        device = input_device(model)
        batch, forward = training_rows(model, tokenizer, inputs, config, device)
        first_positions = batch.positions == batch.last_positions[batch.owners]  # first target token of each example
        watched = batch.targets[first_positions].unique()  # the targets' first tokens, kept off the retain prompts
        optimizer = torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, config.beta2),
                                     weight_decay=config.weight_decay)
        retain_term = RetainTerm(inputs.retain, config, params, watched if config.leak_weight else None)
        if inputs.starts_at_reference:
            retain_term.known_zero()
        model.train(False)  # no dropout: edits must be deterministic
        targets_dev = batch.targets.to(device)
        pick = targets_dev[:, None] if not suppress else torch.stack(
            [targets_dev, old_tokens(inputs.old_token, batch.owners.to(device))], 1)  # (N, 1 or 2): target, old object
        shortlisted = ShortlistedHead(model, pick, config.shortlist_top_k, config.full_vocab_every,
                                      config.shortlist_tail_sample)
        for step in range(config.max_steps + 1):
            hidden = forward(model)
            selected = hidden[batch.rows.to(hidden.device), batch.positions.to(hidden.device)]  # (N, H)
            head, exact = shortlisted(selected)
            first = first_positions.to(head.lse.device)
            reached = targets_reached(head, first, suppress, config)
            if not exact and may_stop(reached, step, config):  # a shortlist's verdict, checked on every token
                reached = targets_reached(shortlisted.full(selected), first, suppress, config)
            if may_stop(reached, step, config):
                log.converged = reached
                break
            total = take_step(rows_loss(head, first, suppress, config), optimizer, retain_term, model, params,
                              step, config)
            log.losses.append(total)
            log.steps = step + 1
            if progress is not None:
                progress(name, step + 1, total)
        log.seconds = time.perf_counter() - start
        log.full_vocab_passes = shortlisted.full_passes
        return log
