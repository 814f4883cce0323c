"""Expectation-maximization for ConvACs: expected counts from one backward pass (DESIGN section 7).

For a sum node ``S_j = sum_a w[j, a] C_a`` the expected count of edge ``(j, a)`` over a batch is
``n[j, a] = sum_x P(S_j on the path, A = a | x)``; with the weights given as softmax logits,
``d log P(x) / d logit[j, a] = n_x[j, a] - w[j, a] N_x[j]``, where ``N_x[j]`` is the *flow* of the
node, ``P(S_j on the path | x) = d log P(x) / d log S_j(x)`` (Peharz et al., "Einsum Networks",
ICML 2020; Darwiche, JACM 2003). So with ``G`` the gradient of the batch's negative
log-likelihood ``-sum_x log P(x)`` and ``N`` the batch's flows,

    n = -G + w * N,

and the same holds for the leaves (categorical values; Gaussian moments below). The flows are
the gradients of the product nodes' log-values, which :class:`FlowRecorder` keeps with forward
hooks on the leaf layer, every pooling layer and the root: nothing in the model knows about EM.
A missing variable contributes no gradient, so its count is ``f * N``, exactly the E-step of EM
with that variable marginalized.

The M-step keeps a running average of the counts, in the space of the sufficient statistics
(online EM, Cappe & Moulines, JRSS-B 2009; Liang & Klein, NAACL 2009), with step size ``s``
(the param group's ``lr``, so ``torch.optim.lr_scheduler`` works unchanged) and a pseudocount
``alpha`` shared by the entries of each distribution (Laplace smoothing):

    S <- (1 - s) S + s n,    w[j, :] <- (S[j, :] + alpha / K) / (sum_a S[j, a] + alpha)

with ``S`` bias-corrected by ``1 - (1 - s)^t`` after ``t`` steps, as Adam does. ``s = 1`` (with
the counts of the whole training set) is classical EM. A node that a batch does not reach keeps
its weights: only its own counts, relative to its own total, move them.

Gaussian leaves (``sigma = min_std + softplus(rho)``): with ``r`` the component's flow,
``sum r x = sigma^2 (-G_mu) + mu N`` and ``sum r (x - mu)^2 = sigma^3 (-G_sigma) + sigma^2 N``;
the running statistics are ``(N, sum r x, sum r x^2)``, and the new mean and variance are their
moments with ``alpha`` pseudo-observations at the current mean and variance.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from convac.errors import InvalidValueError
from convac.leaves import CategoricalLayer, GaussianLayer
from convac.model import ConvAC

AllReduce = Callable[[Tensor], Tensor]


class FlowRecorder:
    """Forward hooks that keep the log-values of the leaf layer, every pooling layer and the root
    (while gradients are on) and, after each backward pass, add their gradients up over the batch:
    :attr:`flows` ``[(P_l, K_l)]`` for levels ``0..L`` (``-dL/dh``: the expected number of
    examples whose path goes through each product node) and :attr:`root` ``(num_classes,)``."""

    def __init__(self, model: ConvAC):
        self.model = model
        self._outputs: list[Tensor | None] = [None] * (model.num_levels + 2)
        self.reset()
        modules = [model.leaves, *model.pools, model.root]
        self._handles = [m.register_forward_hook(self._keep(i)) for i, m in enumerate(modules)]

    def _keep(self, index: int):
        def hook(module: nn.Module, args, output: Tensor) -> None:
            if output.requires_grad:
                output.retain_grad()
                self._outputs[index] = output

        return hook

    def reset(self) -> None:
        """Forget the accumulated flows (after an M-step)."""
        self.flows: list[Tensor] | None = None
        self.root: Tensor | None = None

    def accumulate(self) -> None:
        """Add the flows of the last backward pass: call it after each ``backward()`` of the
        negative log-likelihood."""
        if any(out is None or out.grad is None for out in self._outputs):
            raise RuntimeError("no gradients to read flows from: run a forward pass with gradients and backward() first")
        sums = [-out.grad.sum(1) for out in self._outputs]  # (P_l, K_l) per level; (1, classes) at the root
        self._outputs = [None] * len(self._outputs)
        if self.flows is None:
            self.flows, self.root = sums[:-1], sums[-1][0]
        else:
            self.flows = [a + b for a, b in zip(self.flows, sums[:-1])]
            self.root = self.root + sums[-1][0]

    def remove(self) -> None:
        """Remove the forward hooks and let go of the kept outputs (and so of their graph):
        afterwards the model's forward passes retain no gradients. Safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._outputs = [None] * len(self._outputs)


def check_settings(lr: float, pseudocount: float) -> None:
    """Raise a one-line ValueError unless ``lr`` (the step size) is in ``(0, 1]`` and
    ``pseudocount >= 0``: :class:`EM`'s settings, also checked by the training module before a
    run starts."""
    if not 0.0 < lr <= 1.0:
        raise InvalidValueError(f"the EM step size (lr) must be in (0, 1], got {lr}")
    if pseudocount < 0:
        raise InvalidValueError(f"the EM pseudocount must be >= 0, got {pseudocount}")


class EM(torch.optim.Optimizer):
    """Stochastic (``lr < 1``) or classical (``lr = 1``) EM as a ``torch.optim.Optimizer`` over
    all of a :class:`ConvAC`'s parameters.

    Use: the negative log-likelihood *summed* over the batch, ``backward()``, then
    :meth:`accumulate`; call :meth:`step` after one batch (mini-batch EM) or after all of them
    (full-batch EM), then ``zero_grad()``. The optimizer puts forward hooks on the model
    (:class:`FlowRecorder`): call :meth:`remove_hooks` when done (``ConvACModule`` does when
    fitting ends), or use it as a context manager, ``with EM(model) as optimizer: ...``.

    Args:
        model: the ConvAC (normalized leaves and simplex weights).
        lr: the step size ``s`` in ``(0, 1]``.
        pseudocount: ``alpha >= 0``, the total pseudo-count of each distribution, shared by its
            entries (Laplace smoothing).
        dataset_size: the number of training examples ``N``: a step's counts are scaled by
            ``N / B`` (``B`` the examples it saw), so that the statistics estimate the counts
            of the whole training set and ``alpha`` weighs the same whatever the batch size.
            None: unscaled (``alpha`` then competes with one step's counts).
    """

    def __init__(self, model: ConvAC, lr: float = 0.1, pseudocount: float = 0.1, dataset_size: int | None = None):
        check_settings(lr, pseudocount)
        if dataset_size is not None and dataset_size < 1:
            raise InvalidValueError(f"dataset_size must be a positive number of examples, got {dataset_size}")
        super().__init__(model.parameters(), dict(lr=lr, pseudocount=pseudocount, decay=1.0))
        self.model = model
        self.dataset_size = dataset_size
        self.recorder = FlowRecorder(model)

    def accumulate(self) -> None:
        """Add the last backward pass's flows (see :class:`FlowRecorder`)."""
        self.recorder.accumulate()

    def remove_hooks(self) -> None:
        """Remove the flow recorder's forward hooks from the model (:meth:`FlowRecorder.remove`)."""
        self.recorder.remove()

    def __enter__(self) -> "EM":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove_hooks()

    @torch.no_grad()
    def step(self, closure=None, all_reduce: AllReduce | None = None, world_size: int = 1):
        """The M-step from the accumulated gradients and flows, then forget the flows.

        Under data parallelism the parameters' gradients arrive averaged over ``world_size``
        processes while the flows are local: ``all_reduce`` (a sum over processes) makes the
        counts those of every process's data."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.recorder.flows is None:
            raise RuntimeError("EM.step() without statistics: call accumulate() after each backward()")
        reduce = all_reduce or (lambda t: t)
        flows = [reduce(f) for f in self.recorder.flows]
        root = reduce(self.recorder.root)
        self.recorder.reset()
        # every count is a gradient or a flow: scaling both scales the counts (to the training set);
        # the gradients arrive averaged over the processes, the flows summed
        scale = torch.ones((), device=root.device) if self.dataset_size is None else self.dataset_size / root.sum()
        flows, root = [f * scale for f in flows], root * scale
        group = self.param_groups[0]
        self._decay = self._decay * (1.0 - group["lr"])  # (1 - s)^t: the bias correction
        model = self.model

        def grad(p: Tensor) -> Tensor:
            return torch.zeros_like(p) if p.grad is None else p.grad * (scale * world_size)

        # sum layers: the flow of the sum node (p, j) is that of its parent product node (i, j)
        for level, (layer, pool) in enumerate(zip(model.sums, model.pools), start=1):
            parent = pool.expand(_grid(flows[level], model.grids[level]))  # (K_l, H_{l-1}, W_{l-1})
            node_flow = parent.flatten(1).t()  # (P, K_l)
            if layer.shared:
                node_flow = node_flow.sum(0, keepdim=True)
            self._categorical_step(layer.logits, node_flow.view(*layer.logits.shape[:-1], 1), -1, grad(layer.logits))
        # the root: one sum node per class, with flow P(y | x) (or 1{y} for a joint objective)
        self._categorical_step(model.root.logits, root.view(-1, 1), -1, grad(model.root.logits))
        if isinstance(model.class_logits, nn.Parameter):
            self._categorical_step(model.class_logits, root.sum().view(1), 0, grad(model.class_logits))

        leaves, leaf_flow = model.leaves, flows[0]  # (P_0, M)
        if leaves.shared:
            leaf_flow = leaf_flow.sum(0, keepdim=True)
        if isinstance(leaves, CategoricalLayer):  # logits (P, V, values, M), normalized over dim 2
            self._categorical_step(leaves.logits, leaf_flow.unsqueeze(1).unsqueeze(1), 2, grad(leaves.logits))
        elif isinstance(leaves, GaussianLayer):
            self._gaussian_step(leaves, leaf_flow.unsqueeze(1), grad(leaves.mean), grad(leaves.raw_std))
        else:  # pragma: no cover - every leaf family of convac.leaves is handled above
            raise TypeError(f"EM does not know the leaf layer {type(leaves).__name__}")
        return loss

    @property
    def _decay(self) -> float:
        """``prod_t (1 - s_t)`` over the steps so far (in the param group: saved in checkpoints)."""
        return self.param_groups[0]["decay"]

    @_decay.setter
    def _decay(self, value: float) -> None:
        self.param_groups[0]["decay"] = value

    def _running(self, param: Tensor, name: str, batch: Tensor) -> Tensor:
        """``S <- (1 - s) S + s batch`` for the statistic ``name`` of ``param`` (kept in the
        optimizer's state, so checkpoints hold it), bias-corrected."""
        s = self.param_groups[0]["lr"]
        state = self.state[param]
        state[name] = batch * s if name not in state else state[name].mul_(1.0 - s).add_(batch, alpha=s)
        return state[name] / (1.0 - self._decay)

    def _categorical_step(self, logits: Tensor, node_flow: Tensor, dim: int, grad: Tensor) -> None:
        """M-step of softmax-normalized ``logits`` (normalized over ``dim``): batch counts
        ``n = -grad + w * node_flow`` (``node_flow`` has size 1 along ``dim``), running counts,
        then ``w = normalize(S + alpha / K)``, written back as log-probabilities."""
        log_w = F.log_softmax(logits, dim=dim)
        counts = self._running(logits, "counts", (log_w.exp() * node_flow - grad).clamp_min_(0.0))
        alpha = self.param_groups[0]["pseudocount"]
        counts = counts + alpha / logits.shape[dim]
        total = counts.sum(dim, keepdim=True)
        # rows that no example ever reached (and no pseudocount) keep their weights; an entry of
        # count 0 gets the smallest normal probability of the dtype, a finite logit
        tiny = torch.finfo(counts.dtype).tiny
        logits.copy_(torch.where(total > 0, counts.clamp_min(tiny).log() - total.log(), log_w))

    def _gaussian_step(self, leaves: GaussianLayer, flow: Tensor, grad_mean: Tensor, grad_raw: Tensor) -> None:
        """M-step of Gaussian leaves from the gradients of ``mean`` and ``raw_std`` (P, V, M) and
        the components' flows ``flow`` (P, 1, M): running ``(N, sum r x, sum r x^2)`` (module
        docstring)."""
        mean, sigma = leaves.mean, leaves.std()
        grad_sigma = grad_raw / torch.sigmoid(leaves.raw_std)  # d softplus(rho) / d rho = sigmoid(rho)
        sum_x = sigma**2 * -grad_mean + mean * flow
        sum_sq = sigma**3 * -grad_sigma + sigma**2 * flow + 2 * mean * sum_x - mean**2 * flow
        n = self._running(leaves.mean, "flow", flow.expand_as(mean))
        sum_x, sum_sq = self._running(leaves.mean, "sum_x", sum_x), self._running(leaves.mean, "sum_sq", sum_sq)
        alpha = self.param_groups[0]["pseudocount"]  # pseudo-observations at the current mean and variance
        weight = n + alpha
        reached = weight > 1e-12
        new_mean = (sum_x + alpha * mean) / weight.clamp_min(1e-12)
        second = (sum_sq + alpha * (sigma**2 + mean**2)) / weight.clamp_min(1e-12)
        new_var = (second - new_mean**2).clamp_min(leaves.min_std**2 * (1 + 1e-6))
        new_std = torch.where(reached, new_var.sqrt(), sigma)
        leaves.mean.copy_(torch.where(reached, new_mean, mean))
        excess = (new_std - leaves.min_std).clamp_min(1e-12)
        leaves.raw_std.copy_(excess + torch.log(-torch.expm1(-excess)))  # softplus^-1


def _grid(flow: Tensor, grid: tuple[int, int]) -> Tensor:
    """(P_l, K_l) -> (K_l, H_l, W_l)."""
    return flow.t().reshape(-1, *grid)
