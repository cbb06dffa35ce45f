"""bcl.losses: values and gradients against plain PyTorch (bct, l2) to 1e-5, gradients reaching
a PyTorch model's parameters, the perturbation methods' refresh and state, bad input refused."""

import pytest
import torch
import torch.nn.functional as F

import bcl
from bcl.losses import BCTLoss, CompatLoss, L2Loss, NDPPLoss, ODPPLoss

torch.manual_seed(0)
C, D, B = 6, 8, 12


def batch():
    f = F.normalize(torch.randn(B, D, dtype=torch.float32), dim=1).requires_grad_(True)
    y = torch.arange(B) % C
    return f, y


def protos():
    return F.normalize(torch.randn(C, D), dim=1)


def test_bct_value_and_gradient_equal_plain_pytorch():
    p = protos()
    f, y = batch()
    loss = BCTLoss(p, lambda_=0.7, scale=16.0)(f, y)
    loss.backward()
    got_grad = f.grad.clone()
    f2 = f.detach().clone().requires_grad_(True)
    want = 0.7 * F.cross_entropy(16.0 * f2 @ p.T, y)
    want.backward()
    assert loss.item() == pytest.approx(want.item(), abs=1e-5)
    assert torch.allclose(got_grad, f2.grad, atol=1e-5)


def test_l2_value_and_gradient_equal_plain_pytorch():
    f, y = batch()
    g = F.normalize(torch.randn(B, D), dim=1)
    comp = L2Loss(lambda_=2.0)
    assert comp.needs_old_features
    loss = comp(f, y, old_features=g)
    loss.backward()
    f2 = f.detach().clone().requires_grad_(True)
    want = 2.0 * ((f2 - g) ** 2).sum(dim=1).mean()
    want.backward()
    assert loss.item() == pytest.approx(want.item(), abs=1e-5)
    assert torch.allclose(f.grad, f2.grad, atol=1e-5)


def test_backward_updates_a_pytorch_model():
    model = torch.nn.Linear(5, D)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(B, 5)
    y = torch.arange(B) % C
    comp = BCTLoss(protos())
    first = None
    for _ in range(20):
        opt.zero_grad()
        loss = comp(F.normalize(model(x), dim=1), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0
    assert not torch.equal(model.weight.detach(), before)
    assert loss.item() < first


def test_every_method_but_independent_builds_and_gives_a_gradient():
    p = protos()
    bank = F.normalize(torch.randn(4 * C, D), dim=1)
    bank_y = torch.arange(4 * C) % C
    for m, facts in bcl.method_facts().items():
        if not facts["has_loss"]:
            with pytest.raises(ValueError, match=m):
                CompatLoss(m, p, old_bank=bank, old_bank_labels=bank_y)
            continue
        comp = CompatLoss(m, p, old_bank=bank, old_bank_labels=bank_y)
        f, y = batch()
        g = F.normalize(torch.randn(B, D), dim=1)
        w = torch.randn(C, D, requires_grad=True)
        loss = comp(f, y, old_features=g, classifier=w)
        loss.backward()
        assert torch.isfinite(loss), m
        assert f.grad is not None and f.grad.abs().sum() > 0, m


def test_ndpp_refresh_moves_the_prototypes_and_the_state_round_trips():
    p = protos()
    comp = NDPPLoss(p, ndpp={"eps": 0.3})
    assert comp.refresh_due(epoch=1, batch=0, step=10) == 100  # each epoch from epoch 1
    assert comp.refresh_due(epoch=0, batch=0, step=0) is None
    assert torch.allclose(comp.pseudo_old_prototypes, p, atol=1e-6)  # Δ = 0 before a refresh
    bank = F.normalize(torch.randn(5 * C, D), dim=1)
    stats = comp.refresh(bank, torch.arange(5 * C) % C, epoch=1, step=10)
    assert stats["mean_delta"] > 0 and stats["epoch"] == 1
    moved = comp.pseudo_old_prototypes
    assert not torch.allclose(moved, p, atol=1e-4)
    # state_dict carries Δ: a fresh module loads it and scores a batch identically
    again = NDPPLoss(p, ndpp={"eps": 0.3})
    again.load_state_dict(comp.state_dict())
    assert torch.allclose(again.pseudo_old_prototypes, moved)
    f, y = batch()
    assert comp(f, y).item() == pytest.approx(again(f, y).item(), abs=1e-6)


def test_odpp_needs_its_bank():
    with pytest.raises(ValueError, match="old_bank"):
        ODPPLoss(protos())


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: CompatLoss("ndp", protos()), "unknown method 'ndp'"),
        (lambda: BCTLoss(), "needs the old prototypes"),
        (lambda: BCTLoss(torch.randn(C)), "2-d"),
        (lambda: BCTLoss(torch.full((C, D), float("nan"))), "NaN"),
        (lambda: BCTLoss(protos(), lambda_=-1.0), "compat.lambda"),
        (lambda: NDPPLoss(protos(), ndpp={"epss": 0.1}), "epss"),
        (lambda: NDPPLoss(protos(), ndpp={"eps": 1.5}), "compat.ndpp.eps"),
        (lambda: NDPPLoss(protos(), ndpp=0.1), "dict"),
        (lambda: BCTLoss(protos().long()), "floating-point"),
    ],
)
def test_bad_construction_raises(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_bad_batches_raise():
    comp = BCTLoss(protos())
    f, y = batch()
    with pytest.raises(ValueError, match="labels"):
        comp(f, y[:-1])
    with pytest.raises(ValueError, match="0..6"):
        comp(f, y + C)
    with pytest.raises(ValueError, match="dimension"):
        comp(torch.randn(B, D + 1), y)
    with pytest.raises(ValueError, match="integer labels"):
        comp(f, y.float())
    with pytest.raises(ValueError, match="old_features"):
        L2Loss()(f, y)


def test_advbct_trains_its_own_variables_from_python():
    p = protos()
    bank = F.normalize(torch.randn(4 * C, D), dim=1)
    comp = bcl.losses.AdvBCTLoss(p, old_bank=bank, old_bank_labels=torch.arange(4 * C) % C)
    names = [n for n, _ in comp.named_parameters()]
    assert {"disc1.weight", "disc2.weight", "radii"} <= set(names)
    params = list(comp.parameters())
    before = [t.detach().clone() for t in params]
    opt = torch.optim.SGD(params, lr=0.1)
    f, y = batch()
    g = F.normalize(torch.randn(B, D), dim=1)
    loss = comp(f, y, old_features=g, progress=0.5)
    opt.zero_grad()
    loss.backward()
    assert all(t.grad is not None for t in params)
    opt.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, params))
    # the trained variables travel in the state_dict
    again = bcl.losses.AdvBCTLoss(p, old_bank=bank, old_bank_labels=torch.arange(4 * C) % C)
    again.load_state_dict(comp.state_dict())
    assert comp(f, y, old_features=g, progress=0.5).item() == pytest.approx(
        again(f, y, old_features=g, progress=0.5).item(), abs=1e-6
    )


def test_the_loss_classes_are_the_registry_methods_with_a_loss():
    """Each registered method with a loss has its named class (and nothing else has one): the
    classes are checked against the registry, not kept by hand beside it."""
    import bcl.losses as L

    named = {
        cls._method: name
        for name, cls in vars(L).items()
        if isinstance(cls, type) and issubclass(cls, CompatLoss) and cls is not CompatLoss
    }
    with_loss = {m for m, f in bcl.method_facts().items() if f["has_loss"]}
    assert set(named) == with_loss, (set(named) ^ with_loss)
    for m, name in named.items():
        assert name in L.__all__, name
        assert getattr(L, name).__doc__.split(":")[0] == name
    facts = bcl.method_facts()
    assert facts["ndpp"]["refreshes"] and not facts["bct"]["refreshes"]
    assert facts["ract"]["data_parallel"] != "exact" and facts["bct"]["data_parallel"] == "exact"
