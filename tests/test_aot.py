"""pair_noise: exact Euclidean assignment by every solver, class-wise pairing, input errors; knn_noise."""

import itertools

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from aot_diffusion import aot
from aot_diffusion.aot import knn_noise, pair_noise, pairwise_cost

EXACT = ["lap", "scipy", "pot"]


def total_cost(images, noise):
    return float(np.linalg.norm(images.reshape(len(images), -1) - noise.reshape(len(noise), -1), axis=1).sum())


def brute_force_optimum(images, noise):
    cost = cdist(images.reshape(len(images), -1), noise.reshape(len(noise), -1))
    return min(cost[np.arange(len(images)), list(p)].sum() for p in itertools.permutations(range(len(images))))


def random_pool(n, d, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g, dtype=dtype) * 2 - 1, torch.randn(n, d, generator=g, dtype=dtype)


@pytest.mark.parametrize("solver", EXACT + ["auto"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_optimum(solver, seed):
    g = torch.Generator().manual_seed(seed)
    images, noise = torch.randn(7, 1, 2, 3, generator=g, dtype=torch.float64), torch.randn(7, 1, 2, 3, generator=g, dtype=torch.float64)
    paired, perm = pair_noise(images, noise, solver=solver, return_index=True)
    assert sorted(perm.tolist()) == list(range(7))
    assert torch.equal(paired, noise[perm])
    assert total_cost(images.numpy(), paired.numpy()) == pytest.approx(brute_force_optimum(images.numpy(), noise.numpy()), rel=1e-9)


def test_auto_is_the_fastest_installed_exact_solver(monkeypatch):
    """Which solver `auto` runs, observed at the call (not what is installed): lap's routine, and no other."""
    assert aot.available_solvers()[:2] == ("lap", "scipy")  # lap is a dependency of the project
    called = []
    solve_lap = aot._solve_lap
    monkeypatch.setattr(aot, "_solve_lap", lambda cost: called.append("lap") or solve_lap(cost))
    import scipy.optimize

    monkeypatch.setattr(scipy.optimize, "linear_sum_assignment", lambda *a, **k: called.append("scipy"))
    images, noise = random_pool(12, 5, seed=3)
    pair_noise(images, noise, solver="auto")
    assert called == ["lap"]


def test_euclidean_not_squared():
    # An instance whose Euclidean optimum (1, 0, 2) differs from the squared-Euclidean one (2, 0, 1).
    images = torch.tensor([[2.0, -1.0], [-3.0, 3.0], [3.0, -3.0]], dtype=torch.float64)
    noise = torch.tensor([[1.0, 2.0], [2.0, -1.0], [3.0, 2.0]], dtype=torch.float64)
    for solver in EXACT:
        _, perm = pair_noise(images, noise, solver=solver, return_index=True)
        assert perm.tolist() == [1, 0, 2]


@pytest.mark.parametrize("n,d", [(64, 16), (256, 64)])
def test_solvers_give_the_same_permutation_without_ties(n, d):
    images, noise = random_pool(n, d, seed=n)  # continuous random data: the optimum is unique
    perms = {s: pair_noise(images, noise, solver=s, return_index=True)[1] for s in EXACT}
    assert torch.equal(perms["lap"], perms["scipy"]) and torch.equal(perms["lap"], perms["pot"])
    assert total_cost(images.numpy(), noise[perms["lap"]].numpy()) < total_cost(images.numpy(), noise.numpy())


def test_pairwise_cost_matches_cdist_in_the_pools_precision():
    images, noise = random_pool(100, 300, seed=1)
    reference = cdist(images.double().numpy(), noise.double().numpy())
    assert pairwise_cost(images, noise).dtype == torch.float32  # a float32 pool gets a float32 GEMM ...
    assert pairwise_cost(images.double(), noise.double()).dtype == torch.float64  # ... a float64 one float64
    np.testing.assert_allclose(pairwise_cost(images.double(), noise.double()).numpy(), reference, rtol=1e-12)
    np.testing.assert_allclose(pairwise_cost(images, noise).numpy(), reference, rtol=1e-5)
    same = torch.randn(5, 30, dtype=torch.float64)
    assert (pairwise_cost(same, same).diagonal() >= 0).all()  # clamped before sqrt: no NaN from rounding


def test_reduced_precision_matmul_falls_back_to_float64():
    images, noise = random_pool(8, 5, seed=2)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # allows TF32 on GPUs
        assert pairwise_cost(images, noise).dtype == torch.float64
    finally:
        torch.set_float32_matmul_precision(previous)


def test_float32_cost_finds_the_float64_optimum():
    images, noise = random_pool(256, 3072, seed=5)
    _, fast = pair_noise(images, noise, return_index=True)
    _, exact = pair_noise(images, noise, cost_dtype=torch.float64, return_index=True)
    assert torch.equal(fast, exact)


def test_default_solver_reaches_scipys_optimum_on_a_2048_x_3072_pool():
    torch.set_num_threads(1)
    images, noise = random_pool(2048, 3072, seed=0)
    default, reference = pair_noise(images, noise), pair_noise(images, noise, solver="scipy")
    optimum = total_cost(images.double().numpy(), reference.double().numpy())
    assert total_cost(images.double().numpy(), default.double().numpy()) == pytest.approx(optimum, rel=1e-12)
    assert optimum < total_cost(images.numpy(), noise.numpy()) - 1000  # far below the random pairing


def make_classwise_pool(seed=0, n=60, k=4):
    g = torch.Generator().manual_seed(seed)
    images, noise = torch.randn(n, 1, 3, 3, generator=g), torch.randn(n, 1, 3, 3, generator=g)
    return images, noise, torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("solver", EXACT)
def test_classwise_pairing_never_crosses_classes_and_labels_forms_agree(solver):
    images, noise, ids = make_classwise_pool()
    _, perm = pair_noise(images, noise, labels=ids, solver=solver, return_index=True)
    assert torch.equal(ids[perm], ids)  # every noise stays within its class
    _, perm_onehot = pair_noise(images, noise, labels=torch.nn.functional.one_hot(ids, 4).float(), solver=solver,
                                return_index=True)
    assert torch.equal(perm, perm_onehot)
    for c in range(4):  # class-wise optimum
        idx = (ids == c).nonzero().flatten()
        sub = pair_noise(images[idx], noise[idx], solver=solver)
        assert total_cost(images[idx].numpy(), noise[perm][idx].numpy()) == pytest.approx(
            total_cost(images[idx].numpy(), sub.numpy()), rel=1e-9)


def test_concurrent_classwise_solves_match_sequential_ones():
    images, noise, ids = make_classwise_pool(seed=3, n=400, k=10)
    _, threaded = pair_noise(images, noise, labels=ids, solver="scipy", return_index=True, workers=4)
    _, sequential = pair_noise(images, noise, labels=ids, solver="scipy", return_index=True, workers=1)
    _, by_lap = pair_noise(images, noise, labels=ids, solver="lap", return_index=True)
    assert torch.equal(threaded, sequential) and torch.equal(threaded, by_lap)
    assert not torch.equal(threaded, torch.arange(400))


@pytest.mark.parametrize("kwargs,match", [
    (dict(images=torch.zeros(4, 3), noise=torch.zeros(4, 2)), "same shape"),
    (dict(images=torch.zeros(4, 3), noise=torch.zeros(4, 3), labels=torch.zeros(3, dtype=torch.long)), "labels"),
    (dict(images=torch.zeros(4, 3), noise=torch.zeros(4, 3), labels=torch.zeros(5, 2)), "labels"),
    (dict(images=torch.zeros(4, 3), noise=torch.zeros(4, 3), solver="hungarian"), "solver"),
    (dict(images=torch.zeros(4, 3), noise=torch.full((4, 3), float("nan"))), "noise hold NaN"),
    (dict(images=torch.zeros(4, 3), noise=torch.zeros(4, 3), cost_dtype=torch.float16), "cost_dtype"),
    (dict(images=torch.zeros(0, 3), noise=torch.zeros(0, 3)), "non-empty"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pair_noise(**kwargs)


def test_missing_solver_package_is_a_clear_error_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(aot, "available_solvers", lambda: ("scipy", "pot"))
    with pytest.raises(ImportError, match="pip install lap"):
        pair_noise(torch.zeros(4, 3), torch.zeros(4, 3), solver="lap")
    assert aot.resolve_solver("auto") == "scipy"
    monkeypatch.setattr(aot, "available_solvers", lambda: ())
    with pytest.raises(ImportError, match="no exact assignment solver"):
        aot.resolve_solver("auto")


def test_numpy_in_numpy_out():
    rng = np.random.default_rng(3)
    images, noise = rng.standard_normal((20, 5)), rng.standard_normal((20, 5))
    paired = pair_noise(images, noise, labels=np.arange(20) % 3)
    assert isinstance(paired, np.ndarray)
    expected = pair_noise(torch.from_numpy(images), torch.from_numpy(noise), labels=torch.arange(20) % 3)
    assert np.array_equal(paired, expected.numpy())


def test_knn_noise_keeps_the_nearest_of_k_own_candidates():
    images = torch.rand(50, 3, 4, 4) * 2 - 1
    noise = knn_noise(images, k=4, generator=torch.Generator().manual_seed(7))
    candidates = torch.randn((4, *images.shape), generator=torch.Generator().manual_seed(7))
    dist = (candidates - images).flatten(2).norm(dim=2)  # [k, N]
    expected = candidates[dist.argmin(0), torch.arange(50)]
    assert noise.shape == images.shape and torch.equal(noise, expected)
    assert not torch.equal(noise, candidates[0])  # some image kept a candidate other than the first
    # k = 1 is plain noise; larger k lowers the distance the training sees.
    assert torch.equal(knn_noise(images, 1, torch.Generator().manual_seed(7)), candidates[0])
    assert aot.mean_distance(images, noise) < aot.mean_distance(images, candidates[0])


def test_knn_noise_inputs():
    images = np.zeros((6, 2), dtype=np.float32)
    out = knn_noise(images, k=2, generator=torch.Generator().manual_seed(0), labels=np.arange(6) % 2)
    assert isinstance(out, np.ndarray) and out.shape == (6, 2)
    with pytest.raises(ValueError, match="k must be"):
        knn_noise(torch.zeros(6, 2), k=0)
    with pytest.raises(ValueError, match="labels"):
        knn_noise(torch.zeros(6, 2), labels=torch.zeros(5, dtype=torch.long))


def test_lap_through_ctypes_matches_lap_lapjv_and_falls_back(monkeypatch):
    import lap

    assert aot._lap_routine() is not None  # the GIL-releasing path is the one in use with this lap build
    for n in (1, 2, 300):
        images, noise = random_pool(n, 20, seed=n)
        cost = pairwise_cost(images.double(), noise.double()).numpy()
        expected = lap.lapjv(cost)[1]
        assert np.array_equal(aot.assignment(cost, "lap"), expected)
        monkeypatch.setattr(aot, "_lap_routine", lambda: None)  # a lap build without the exported routine
        assert np.array_equal(aot.assignment(cost, "lap"), expected)
        monkeypatch.undo()


def test_one_registry_pairs_noise_for_every_caller():
    """aot.PAIRINGS is where pairings live: the schema's choices come from it, training and DG pair through it,
    and a registered pairing is a valid choice (removed again after the test)."""
    from aot_diffusion import schema
    from aot_diffusion.training import PoolSource

    assert {"none", "assignment", "knn"} <= set(aot.PAIRINGS)
    assert set(schema.VARIANT["pairing"].choices()) == set(aot.PAIRINGS)
    assert set(schema.MODEL["pairing"].choices()) == set(aot.PAIRINGS)
    assert set(schema.DISCRIMINATOR["pairing"].choices()) == {"model"} | set(aot.PAIRINGS)
    x, n = torch.randn(16, 1, 4, 4), torch.randn(16, 1, 4, 4)
    assert torch.equal(aot.pair("none", x, n), n)
    assert torch.equal(aot.pair("assignment", x, n), pair_noise(x, n))
    with pytest.raises(ValueError, match="registered"):
        aot.pair("sinkhorn", x, n)

    @aot.register_pairing("reversed_toy")
    def reversed_toy(images, noise, class_ids, *, generator=None, solver="auto", knn_k=4):
        return noise.flip(0)

    try:
        pool = PoolSource(x, None, pool_size=16, pairing="reversed_toy", seed=0).make(0)
        plain = PoolSource(x, None, pool_size=16, pairing="none", seed=0).make(0)
        assert torch.equal(pool.noise, plain.noise.flip(0))  # training pairs through the registry
        assert "reversed_toy" in schema.VARIANT["pairing"].choices()  # read when checked: a plugin's count
        with pytest.raises(ValueError, match="registered already"):
            aot.register_pairing("reversed_toy")(reversed_toy)
    finally:
        aot.unregister_pairing("reversed_toy")
