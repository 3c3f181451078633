"""Prior declarations load from models/ or a user file; bad values fail at load time, named."""

from __future__ import annotations

import pytest

from monteclora_pyro import PriorSpec, available_priors, load_prior


def test_bundled_priors_load():
    assert {"monteclora", "gaussian", "map"} <= set(available_priors())
    spec = load_prior("monteclora")
    assert spec.family == "monteclora" and spec.df == spec.rank + 2
    assert load_prior("map").prior_scale is None  # flat: plain LoRA
    gaussian = load_prior("gaussian")  # BLoB: prior std 0.2, posterior std from 0.05
    assert (gaussian.prior_scale, gaussian.init_posterior_scale) == (0.2, 0.05)


def test_a_user_adds_a_prior_by_adding_a_file(tmp_path):
    path = tmp_path / "wide.toml"
    path.write_text('family = "monteclora"\nrank = 4\nwishart_df = 9\nstochastic = ["A", "B"]\n')
    spec = load_prior(path)
    assert (spec.name, spec.rank, spec.df, spec.stochastic) == ("wide", 4, 9.0, ("A", "B"))


def test_overrides_are_validated_again():
    assert load_prior("monteclora", rank=16).df == 18
    with pytest.raises(ValueError, match=r"wishart_df = 10.0 must be > rank - 1 = 15"):
        PriorSpec(family="monteclora", rank=8, wishart_df=10).replace(rank=16)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"family": "wishart"},
         r"family = 'wishart' is unknown; allowed: blob, ensemble, gaussian, laplace, map, monteclora"),
        ({"rank": 0}, r"rank = 0 must be an integer >= 1"),
        ({"num_components": 0}, r"num_components = 0 must be an integer >= 1"),
        ({"rank": 8, "wishart_df": 7}, r"wishart_df = 7.0 must be > rank - 1 = 7"),
        ({"dirichlet_concentration": 0.0}, r"dirichlet_concentration = 0.0 must be > 0"),
        ({"dirichlet_concentration": -1.0}, r"dirichlet_concentration = -1.0 must be > 0"),
        ({"perturbation_scale": 0.0}, r"perturbation_scale = 0.0 must be > 0"),
        ({"stochastic": ["C"]}, r"stochastic = \['C'\] must be a non-empty subset"),
        ({"targets": []}, r"targets = \[\] must be a non-empty list"),
        ({"family": "gaussian"}, r"prior_scale is missing: family 'gaussian'"),
        ({"family": "map", "prior_scale": -1.0}, r"prior_scale = -1.0 must be > 0"),
        ({"alpha": "16"}, r"alpha = '16' must be a number"),
        ({"scale_hyperprior_std": 0.0}, r"scale_hyperprior_std = 0.0 must be > 0 \(or omitted for a fixed eps\)"),
        ({"perturbation_relative": 1}, r"perturbation_relative = 1 must be true or false"),
        ({"scale_hyperprior_std": 0.5, "scale_init": 0.0}, r"scale_init = 0.0 must be > 0 \(the median q\(tau\)"),
        ({"scale_init": 0.1}, r"scale_init = 0.1 needs scale_hyperprior_std"),
        ({"family": "gaussian", "prior_scale": 0.2, "init_posterior_scale": -0.1},
         r"init_posterior_scale = -0.1 must be > 0"),
        ({"family": "map", "num_components": 4}, r"unknown keys \['num_components'\]; family 'map' allows"),
    ],
)
def test_bad_declarations_fail_with_the_value_and_the_allowed_range(tmp_path, fields, message):
    data = {"family": "monteclora"} | fields
    lines = [f"{k} = {v!r}".replace("'", '"') if not isinstance(v, list) else f"{k} = {v}".replace("'", '"')
             for k, v in data.items()]
    path = tmp_path / "bad.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        load_prior(path)


def test_unknown_keys_names_and_missing_files_fail_clearly(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('family = "monteclora"\nwishart_dof = 12\n')
    with pytest.raises(ValueError, match=r"unknown keys \['wishart_dof'\]"):
        load_prior(path)
    bundled = (r"neither a bundled prior \(blob, ensemble, gaussian, laplace, laplace_holdout, laplace_kron, "
               r"laplace_kron_holdout, laplace_sampled, map, monteclora")
    with pytest.raises(ValueError, match=bundled):
        load_prior("nonexistent")
    with pytest.raises(ValueError, match=r"prior file '.*missing.toml' does not exist"):
        load_prior(tmp_path / "missing.toml")
    (tmp_path / "binary.toml").write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match=r"prior file '.*binary.toml' is not valid TOML"):
        load_prior(tmp_path / "binary.toml")
    (tmp_path / "nofamily.toml").write_text("rank = 4\n")
    with pytest.raises(ValueError, match="must declare a family"):
        load_prior(tmp_path / "nofamily.toml")
