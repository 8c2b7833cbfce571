"""prune: remove weights (magnitude, 2:4) or whole structures (attention heads, MLP channels).

Only the transformer blocks are pruned: embeddings, lm_head, the pooler and the classifier head
are left alone, because they are small next to the blocks and the model's output depends on
every one of their weights.

- magnitude: the smallest |w| of every Linear in the blocks, each layer to the same fraction, so
  the sparsity over the pruned layers is the target exactly (reported as `achievedSparsity`;
  the pipeline's `sparsity`, models.weight_sparsity, counts the same layers). Per layer rather than
  global, so no layer is emptied. Saved dense: the zeros are in the weights.
- 2:4: in every group of 4 consecutive input weights of a row, the 2 smallest are zeroed.
- attention-heads: the same number of heads is removed from every layer (transformers builds all
  layers from one config, so it cannot reload layers that differ), the least important ones by
  the L2 norm of their q/k/v rows and o columns. Under grouped-query attention a key-value head
  goes with the query heads that share it, so heads leave a whole group at a time and the
  grouping stays intact (the KV cache shrinks with the rest).
- channels: the same number of MLP intermediate channels is removed from every layer, by the L2
  norm of the channel's weights in and out; config.intermediate_size is rewritten.

Structured pruning uses torch-pruning's pruning functions on layers named here rather than its
dependency graph: tracing the tiny test Llama with head pruning did not finish in minutes
(torch-pruning 1.6, transformers 5.23), and the coupled layers of a transformer block are few and
well known. Each result is checked against a model built from the rewritten config.

With `iterations` N the target is reached in N equal steps (target * i / N after step i), each
followed by the recovery fine-tune when one is given; during recovery the zeros of magnitude and
2:4 pruning are held by re-applying the masks after every optimizer step.
"""
from __future__ import annotations

import copy
from typing import Iterator

import torch
from torch import nn

from ..errors import BadInputError
from . import examples, models
from .models import ModelRef
from .stages import StageContext, StageOutcome

# (query, key, value, output) of a block's attention, by layout: Llama-style, BERT-style.
ATTENTION_LAYOUTS = [
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"),
]
# The layers into the MLP's intermediate channels, then the one out of them, by layout: gated (Llama), BERT.
MLP_LAYOUTS = [
    ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    ("intermediate.dense", "output.dense"),
]


def run(settings, model: ModelRef, ctx: StageContext) -> StageOutcome:
    torch.manual_seed(ctx.config.seed)
    net, tokenizer = models.load(model)
    pruner = PRUNERS[settings.method](net, settings.sparsity)  # refuses what it cannot do, before any work
    recovery = settings.recovery
    steps = recovery.steps if recovery else 0
    total, done = settings.iterations * (1 + steps), 0
    metrics: dict[str, float] = {}
    for i in range(1, settings.iterations + 1):
        pruner.step(settings.sparsity * i / settings.iterations)
        done += 1
        ctx.progress(done, total)
        if recovery:
            data = examples.training_batches(model.task, tokenizer, recovery.dataset_path, ctx.config.max_seq_length,
                                             recovery.batch_size, ctx.config.seed + i)
            loss = recover(net, data, steps, recovery.learning_rate, pruner.hold,
                           lambda step: ctx.progress(done + step, total))
            done += steps
            metrics["recoveryLossEnd"] = loss
    net.eval()
    models.save(net, tokenizer, ctx.out)
    metrics.update(pruner.metrics())
    metrics["recoverySteps"] = float(steps * settings.iterations)
    return StageOutcome(model.with_path(ctx.out), metrics)


def recover(net: nn.Module, data: Iterator[dict], steps: int, learning_rate: float, hold, progress) -> float:
    """Fine-tune on the task for `steps` steps, calling `hold` after each update; the mean loss of the last 10."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate)
    net.train()
    losses = []
    for step in range(1, steps + 1):
        loss = net(**next(data)).loss  # the model's own task loss: labels are in the batch
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        hold()
        losses.append(float(loss.detach()))
        progress(step)
    net.eval()
    return sum(losses[-10:]) / len(losses[-10:])


def blocks(net: nn.Module) -> nn.ModuleList:
    """The transformer blocks: the ModuleList holding the most parameters."""
    lists = [m for m in net.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise BadInputError(f"A {type(net).__name__} has no list of transformer blocks to prune.")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def _architecture(net: nn.Module) -> str:
    return f"{net.config.model_type} ({type(net).__name__})"


def _submodules(block: nn.Module, names) -> list[nn.Module] | None:
    try:
        return [block.get_submodule(n) for n in names]
    except AttributeError:
        return None


def _layout(net: nn.Module, layouts, what: str):
    """The first layout whose modules every block has, with those modules per block."""
    for layout in layouts:
        found = [_submodules(block, layout) for block in blocks(net)]
        if all(found):
            return layout, found
    raise BadInputError(f"{what} knows the layers of Llama-style and BERT-style models, not those of a {_architecture(net)} model.")


def _check_reloadable(net: nn.Module, what: str) -> None:
    """Build the model from its rewritten config, without weights, and compare every shape."""
    with torch.device("meta"):
        probe = type(net)(copy.deepcopy(net.config))
    want = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    if want != have:
        raise BadInputError(f"{what} cannot be expressed in the config of a {_architecture(net)} model, so transformers could not reload it.")


class MaskPruner:
    """Zeros inside the weights of the blocks' Linear layers; `hold` keeps them zero while training."""

    def __init__(self, net: nn.Module, sparsity: float):
        self.layers = [m for m in blocks(net).modules() if isinstance(m, nn.Linear)]
        if not self.layers:  # GPT-2's blocks, for one, are made of transformers' Conv1D
            raise BadInputError(f"Weight pruning found no Linear layers in the blocks of a {_architecture(net)} model.")
        self.masks: dict[nn.Linear, torch.Tensor] = {}
        self.target = sparsity

    @torch.no_grad()
    def step(self, target: float) -> None:
        for layer in self.layers:
            self.masks[layer] = self.mask(layer.weight.abs(), target)
            layer.weight.mul_(self.masks[layer])

    @torch.no_grad()
    def hold(self) -> None:
        for layer, mask in self.masks.items():
            layer.weight.mul_(mask)

    def metrics(self) -> dict[str, float]:
        zeros = sum(int((layer.weight == 0).sum()) for layer in self.layers)
        total = sum(layer.weight.numel() for layer in self.layers)
        return {"targetSparsity": self.target, "achievedSparsity": zeros / total, "prunedLayers": float(len(self.layers))}


class Magnitude(MaskPruner):
    @staticmethod
    def mask(magnitude: torch.Tensor, target: float) -> torch.Tensor:
        keep = torch.ones(magnitude.numel(), dtype=torch.bool)
        k = round(target * magnitude.numel())
        if k:  # weights already zero are the smallest, so every step's mask contains the last one's zeros
            keep[magnitude.flatten().topk(k, largest=False).indices] = False
        return keep.view_as(magnitude)


class TwoFour(MaskPruner):
    def __init__(self, net: nn.Module, sparsity: float):
        if sparsity != 0.5:
            raise BadInputError(f"2:4 pruning zeroes 2 weights of every 4, a sparsity of 0.5, not {sparsity}; set sparsity to 0.5.")
        super().__init__(net, sparsity)
        odd = next((layer for layer in self.layers if layer.in_features % 4), None)
        if odd is not None:
            raise BadInputError(f"2:4 pruning needs layers whose inputs come in groups of 4; a {_architecture(net)} has a layer with {odd.in_features}.")

    @staticmethod
    def mask(magnitude: torch.Tensor, target: float) -> torch.Tensor:
        rows, cols = magnitude.shape
        groups = magnitude.reshape(rows, cols // 4, 4)
        zeros = round(4 * target)  # 1 of 4, then 2 of 4, when reached in steps
        keep = torch.ones_like(groups, dtype=torch.bool)
        if zeros:
            keep.scatter_(-1, groups.topk(zeros, dim=-1, largest=False).indices, False)
        return keep.reshape(rows, cols)


def _norms(layer: nn.Linear, dim: int, width: int) -> torch.Tensor:
    """Squared L2 norm of each slice of `width` rows (dim 0) or columns (dim 1) of the weight."""
    w = layer.weight.detach()
    w = w if dim == 0 else w.t()
    return w.reshape(-1, width, w.shape[1]).pow(2).sum(dim=(1, 2))


def _span(units, width: int) -> list[int]:
    return [u * width + j for u in units for j in range(width)]


class Heads:
    """Remove attention heads, the same number from every layer."""

    def __init__(self, net: nn.Module, sparsity: float):
        self.net = net
        cfg = net.config
        self.heads = cfg.num_attention_heads
        layout, self.layers = _layout(net, ATTENTION_LAYOUTS, "Attention-head pruning")
        self.llama_style = layout is ATTENTION_LAYOUTS[0]
        if self.llama_style:
            self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
            self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        else:
            # BERT's config derives the head size from hidden_size / num_attention_heads, so fewer
            # heads can only be written down as config.pruned_heads, which transformers 5 dropped.
            if not hasattr(net.base_model, "_prune_heads") or not hasattr(net, "prune_heads"):
                import transformers

                raise BadInputError(f"Attention-head pruning of a {_architecture(net)} model needs transformers 4 "
                                    f"(the runner-compress-onnx image): transformers {transformers.__version__}, in this one, "
                                    "cannot reload such a model with fewer heads; use channels pruning here.")
            self.kv_heads = self.heads
            self.head_dim = cfg.hidden_size // self.heads
            self.alive = [list(range(self.heads)) for _ in self.layers]  # transformers numbers heads as they were
        self.group = self.heads // self.kv_heads  # query heads per key-value head; removed together
        self.removed = 0  # groups removed per layer
        goal = round(sparsity * self.kv_heads)
        if not 0 < goal < self.kv_heads:
            unit = "key-value groups of heads" if self.group > 1 else "heads"
            raise BadInputError(f"Sparsity {sparsity} of {self.kv_heads} {unit} per layer would remove "
                                f"{'all' if goal else 'none'} of them; choose a sparsity that removes some but not all.")

    def step(self, target: float) -> None:
        goal = round(target * self.kv_heads)
        count = goal - self.removed
        if count <= 0:  # an early step of many may be too small to take a whole head
            return
        _, self.layers = _layout(self.net, ATTENTION_LAYOUTS, "Attention-head pruning")  # transformers replaces pruned modules
        if self.llama_style:
            self._remove_groups(count)
            _check_reloadable(self.net, "Attention-head pruning")
        else:
            self._remove_bert_heads(count)
        self.removed = goal

    def _weakest(self, q, k, v, o, count: int) -> list[int]:
        d, g = self.head_dim, self.group
        score = (_norms(q, 0, d * g) + _norms(o, 1, d * g) + _norms(k, 0, d) + _norms(v, 0, d))
        return sorted(score.topk(count, largest=False).indices.tolist())

    def _remove_groups(self, count: int) -> None:
        import torch_pruning as tp

        d, g = self.head_dim, self.group
        for q, k, v, o in self.layers:
            groups = self._weakest(q, k, v, o, count)
            query_heads = [h for grp in groups for h in range(grp * g, (grp + 1) * g)]
            tp.prune_linear_out_channels(q, _span(query_heads, d))
            tp.prune_linear_out_channels(k, _span(groups, d))
            tp.prune_linear_out_channels(v, _span(groups, d))
            tp.prune_linear_in_channels(o, _span(query_heads, d))
        cfg = self.net.config
        remaining = self.kv_heads - self.removed - count
        # head_dim is written out: it no longer follows from hidden_size / num_attention_heads.
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = remaining * g, remaining, d

    def _remove_bert_heads(self, count: int) -> None:
        plan = {}
        for i, (q, k, v, o) in enumerate(self.layers):
            weakest = self._weakest(q, k, v, o, count)
            plan[i] = [self.alive[i][h] for h in weakest]
            self.alive[i] = [h for h in self.alive[i] if h not in plan[i]]
        self.net.prune_heads(plan)  # records config.pruned_heads, which from_pretrained applies again

    def hold(self) -> None:  # the heads are gone, nothing to hold
        pass

    def metrics(self) -> dict[str, float]:
        per_layer = self.removed * self.group
        return {"headsRemoved": float(per_layer * len(self.layers)), "headsPerLayer": float(self.heads - per_layer)}


class Channels:
    """Remove MLP intermediate channels, the same number from every layer."""

    def __init__(self, net: nn.Module, sparsity: float):
        self.net = net
        _, self.layers = _layout(net, MLP_LAYOUTS, "Channel pruning")  # per block: the layers in, then the one out
        self.original = self.width = net.config.intermediate_size
        if not isinstance(self.original, int):
            raise BadInputError(f"Channel pruning needs one intermediate_size for every layer; a {_architecture(net)} has {self.original}.")
        if round((1 - sparsity) * self.original) < 1:
            raise BadInputError(f"Sparsity {sparsity} would remove every one of the {self.original} MLP channels; choose a lower one.")

    def step(self, target: float) -> None:
        import torch_pruning as tp

        keep = round((1 - target) * self.original)
        count = self.width - keep
        if count <= 0:
            return
        for *ins, out in self.layers:
            score = sum(_norms(layer, 0, 1) for layer in ins) + _norms(out, 1, 1)
            drop = sorted(score.topk(count, largest=False).indices.tolist())
            for layer in ins:
                tp.prune_linear_out_channels(layer, drop)
            tp.prune_linear_in_channels(out, drop)
        self.width = self.net.config.intermediate_size = keep
        _check_reloadable(self.net, "Channel pruning")

    def hold(self) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return {"channelsRemoved": float((self.original - self.width) * len(self.layers)), "intermediateSize": float(self.width)}


PRUNERS = {"magnitude": Magnitude, "2:4": TwoFour, "attention-heads": Heads, "channels": Channels}
