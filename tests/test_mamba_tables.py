"""The Mamba knowledge tables: the site list is pinned, a new site is one name plus one row per family, and
a new architecture with a Mamba-1- or Mamba-2-style mixer is one ``register_architecture`` entry."""

from __future__ import annotations

import pytest
import torch
from tiny import make_model
from transformers import MambaConfig, MambaForCausalLM

from lm_eval_ssmsteer.mamba import arch as A
from lm_eval_ssmsteer.mamba import sites as S
from lm_eval_ssmsteer.spec import SpecError, SteeringSpec
from lm_eval_ssmsteer.steering import steer


def test_the_site_list_is_pinned():
    # renaming or dropping a site breaks every saved spec: it must be a deliberate act
    assert S.SITES == ("mixer_out", "residual", "delta", "B", "C", "ssm_out", "gate")
    for family in A.FAMILIES:
        assert all(S.site_row(site, family).reach in S.REACHES for site in S.SITES)
        assert all(S.same_site(site, S.twin(site, family) or site, family) for site in S.SITES)


@pytest.fixture
def fresh_tables(monkeypatch):
    """Registrations made in a test disappear after it."""
    monkeypatch.setattr(S, "_ROWS", dict(S._ROWS))
    monkeypatch.setattr(S, "_NAMES", list(S._NAMES))
    monkeypatch.setattr(A, "ARCHITECTURES", dict(A.ARCHITECTURES))


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
@torch.no_grad()
def test_a_new_site_is_one_name_and_a_row_per_family(arch, fresh_tables):
    # "gate_twin": SiLU(z) again, reached the way gate is on each family
    S.register_site(S.SiteRow("gate_twin", "mamba1", S._d_inner, S.SCAN_GATED_OUTPUT, twin="gate"))
    S.register_site(S.SiteRow("gate_twin", "mamba2", S._d_inner, S.GATED_NORM_INPUT, twin="gate"))
    model = make_model(arch, seed=3)
    ids = torch.randint(1, 250, (2, 9), generator=torch.Generator().manual_seed(0))
    with steer(model, SteeringSpec.single(layer=1, site="gate_twin", channels=[0, 5, 9], scale=1.7)):
        new = model(ids).logits
    with steer(model, SteeringSpec.single(layer=1, site="gate", channels=[0, 5, 9], scale=1.7)):
        old = model(ids).logits
    assert torch.equal(new, old)
    assert not torch.equal(new, model(ids).logits)


def test_an_unregistered_site_is_refused_with_the_allowed_list():
    with pytest.raises(SpecError, match="site='gate_twin' is not a known site; allowed: mixer_out, residual"):
        SteeringSpec.single(layer=0, site="gate_twin", scale=2.0)


class ToyMambaConfig(MambaConfig):
    model_type = "toy_mamba"


@torch.no_grad()
def test_a_new_architecture_is_one_entry(fresh_tables):
    base = make_model("mamba", seed=4)
    settings = {k: v for k, v in base.config.to_dict().items() if k != "model_type"}
    toy = MambaForCausalLM(ToyMambaConfig(**settings)).eval()
    toy.load_state_dict(base.state_dict())
    spec = SteeringSpec.single(layer=[0, 2], site="delta", channels="all", scale=2.5)
    with pytest.raises(A.UnsupportedModelError, match="model_type 'toy_mamba'"), steer(toy, spec):
        pass
    mamba = A.ARCHITECTURES["mamba"]
    A.register_architecture(
        A.Architecture("toy_mamba", "ToyMambaForCausalLM", "mamba1", mamba.modeling_module, mamba.shape)
    )
    ids = torch.randint(1, 250, (2, 9), generator=torch.Generator().manual_seed(1))
    with steer(toy, spec):
        toy_logits = toy(ids).logits
    with steer(base, spec):
        base_logits = base(ids).logits
    assert A.describe_model(toy).architecture == "toy_mamba"
    assert torch.equal(toy_logits, base_logits)
    assert not torch.equal(toy_logits, toy(ids).logits)
