"""The compatibility losses of the bcl Rust library as ``torch.nn.Module``s.

Each module computes ``λ · L_comp`` on a batch of the new model's L2-normalised embeddings; the
Rust code runs on the caller's own tensors (the same ``at::Tensor``), so ``loss.backward()``
reaches the caller's model. Add it to the classification loss::

    comp = bcl.losses.NDPPLoss(old_prototypes, ndpp={"eps": 0.3})
    for epoch in range(epochs):
        for step, (x, y) in enumerate(batches):
            if comp.refresh_due(epoch, step, global_step):      # NDPP/ODPP/UniBCT
                comp.refresh(bank_features, bank_labels, epoch, global_step)
            f = F.normalize(model(x))
            loss = cls_loss(f, y) + comp(f, y)

Settings are those of the ``[compat]`` table of a ``bcl`` configuration: ``lambda_`` (λ),
``scale``, ``refresh`` (a dict), and the method's own section as a dict named after it
(``ndpp={"eps": 0.2}``); ``bcl methods`` lists every method with its settings.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import torch

from ._bcl import CompatLossCore


def _float_tensor(name: str, x: Any) -> torch.Tensor:
    t = torch.as_tensor(x)
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected floating-point values, got {t.dtype}")
    return t


def _label_tensor(name: str, y: Any) -> torch.Tensor:
    t = torch.as_tensor(y)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer labels, got {t.dtype}")
    return t.to(torch.int64)


class CompatLoss(torch.nn.Module):
    """A registered method's compatibility loss (every method of the CLI but ``independent``).

    ``old_prototypes`` ``[C, d]``: the old model's class prototypes (normalised here), for the
    methods that start from them (bct, ndpp, odpp, lce, unibct). ``old_bank``/``old_bank_labels``:
    a per-class sample of old features (odpp, lce, advbct).

    AdvBCT trains variables of its own (a discriminator, the class radii): ``parameters()``
    yields them (the very tensors the Rust loss uses); give them to the optimiser with the
    model's, e.g. ``SGD([*model.parameters(), *comp.parameters()], ...)``.
    """

    def __init__(
        self,
        method: str,
        old_prototypes: Any = None,
        *,
        old_bank: Any = None,
        old_bank_labels: Any = None,
        lambda_: float = 1.0,
        scale: Optional[float] = None,
        refresh: Optional[dict] = None,
        **method_settings: dict,
    ) -> None:
        super().__init__()
        settings: dict = {"lambda": float(lambda_)}
        if scale is not None:
            settings["scale"] = float(scale)
        if refresh is not None:
            settings["refresh"] = dict(refresh)
        for section, values in method_settings.items():
            if not isinstance(values, dict):
                raise ValueError(f"{section}: expected a dict of settings, got {values!r}")
            settings[section] = values
        protos = None if old_prototypes is None else _float_tensor("old_prototypes", old_prototypes)
        bank = None if old_bank is None else _float_tensor("old_bank", old_bank)
        bank_y = None if old_bank_labels is None else _label_tensor("old_bank_labels", old_bank_labels)
        self._core = CompatLossCore(method, json.dumps(settings), protos, bank, bank_y)

    @property
    def method(self) -> str:
        """The method's name."""
        return self._core.method

    @property
    def weight(self) -> float:
        """λ."""
        return self._core.weight

    @property
    def needs_old_features(self) -> bool:
        """Whether ``forward`` needs the old model's embeddings of the batch (l2, ract)."""
        return self._core.needs_old_embeddings

    def forward(
        self,
        new_features: torch.Tensor,
        labels: Any,
        old_features: Optional[torch.Tensor] = None,
        classifier: Optional[torch.Tensor] = None,
        progress: float = 0.0,
    ) -> torch.Tensor:
        """``λ · L_comp`` on a batch: ``new_features`` ``[B, d]`` (normalised, with gradient),
        ``labels`` ``[B]``, ``old_features`` the old model's embeddings of the same images (l2,
        ract), ``classifier`` the new classifier's weight rows (lce), ``progress`` in [0, 1]."""
        y = _label_tensor("labels", labels)
        loss = self._core.forward(new_features, y, old_features, classifier, float(progress))
        if loss is None:
            return new_features.new_zeros(())
        return loss * self.weight

    def refresh_due(self, epoch: int, batch: int, step: int) -> Optional[int]:
        """The bank size per class a refresh wants before this batch, or ``None``."""
        return self._core.refresh_due(epoch, batch, step)

    def refresh(self, bank: torch.Tensor, bank_labels: Any, epoch: int = 0, step: int = 0):
        """Refreshes the method's state (NDPP/ODPP: Δ; UniBCT: the refined prototypes) from
        current new features of the training set; returns the refresh's diagnostics (``None``
        for a method without state)."""
        with torch.no_grad():
            stats = self._core.refresh(bank.detach(), _label_tensor("bank_labels", bank_labels), epoch, step)
        return None if stats is None else json.loads(stats)

    def observe(self, new_features: torch.Tensor, labels: Any) -> None:
        """Shows the loss a batch's features (moving-average new prototypes)."""
        self._core.observe(new_features.detach(), _label_tensor("labels", labels))

    @property
    def pseudo_old_prototypes(self) -> Optional[torch.Tensor]:
        """``normalize(P° + Δ)`` for the perturbation methods, else ``None``."""
        state = dict(self._core.state())
        if "delta" not in state:
            return None
        return torch.nn.functional.normalize(state["old_prototypes"] + state["delta"], dim=1)

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """The method's own trainable tensors (AdvBCT's), by name."""
        for name, t in self._core.parameters():
            yield (f"{prefix}.{name}" if prefix else name), t

    def parameters(self, recurse: bool = True):
        for _, t in self.named_parameters():
            yield t

    def get_extra_state(self) -> dict:
        state = {name: t.detach().clone() for name, t in self._core.state()}
        state.update({f"param:{n}": t.detach().clone() for n, t in self._core.parameters()})
        return state

    def set_extra_state(self, state: dict) -> None:
        params = dict(self._core.parameters())
        with torch.no_grad():
            for name, t in state.items():
                if name.startswith("param:"):
                    params[name[len("param:"):]].copy_(t)
        self._core.load_state([(n, t) for n, t in state.items() if not n.startswith("param:")])


def _named(method: str, doc: str):
    class Named(CompatLoss):
        def __init__(self, old_prototypes: Any = None, **kwargs: Any) -> None:
            super().__init__(method, old_prototypes, **kwargs)

    Named._method = method
    Named.__name__ = Named.__qualname__ = doc.split(":")[0]
    Named.__doc__ = doc
    return Named


L2Loss = _named("l2", "L2Loss: ‖f − g‖² to the old model's embedding g of the same image.")
BCTLoss = _named("bct", "BCTLoss: the influence loss against the old class prototypes.")
NDPPLoss = _named("ndpp", "NDPPLoss: the influence loss against NDPP's pseudo-old prototypes.")
ODPPLoss = _named("odpp", "ODPPLoss: the influence loss against ODPP's pseudo-old prototypes.")
LCELoss = _named("lce", "LCELoss: classifier aligned with the old centres plus the old-class boundary.")
LCENDPPLoss = _named("lce-ndpp", "LCENDPPLoss: LCE with its classifier aligned with NDPP's pseudo-old centres.")
LCEODPPLoss = _named("lce-odpp", "LCEODPPLoss: LCE with its classifier aligned with ODPP's pseudo-old centres.")
UniBCTLoss = _named("unibct", "UniBCTLoss: the influence loss against old prototypes refined over the new class graph.")
RACTLoss = _named("ract", "RACTLoss: contrastive against old features with new-to-new negatives.")
AdvBCTLoss = _named("advbct", "AdvBCTLoss: adversarial discriminator plus elastic old-class boundary.")

__all__ = [
    "CompatLoss",
    "L2Loss",
    "BCTLoss",
    "NDPPLoss",
    "ODPPLoss",
    "LCELoss",
    "LCENDPPLoss",
    "LCEODPPLoss",
    "UniBCTLoss",
    "RACTLoss",
    "AdvBCTLoss",
]
