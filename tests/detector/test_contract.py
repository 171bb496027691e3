"""Contract checks run over every detector in detector.registry.DETECTORS."""

from __future__ import annotations

import ast
import importlib
import inspect
import pickle
import pkgutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import detector
from detector.registry import DETECTORS, DetectorFactory

AUC_FLOOR = 0.9


@pytest.fixture(params=DETECTORS, ids=lambda f: f.name)
def factory(request: pytest.FixtureRequest) -> DetectorFactory:
    return request.param


def test_constructor_is_keyword_only_and_stores_parameters_only(factory: DetectorFactory) -> None:
    det = factory(0)
    params = list(inspect.signature(type(det).__init__).parameters.values())[1:]
    assert params, "a detector has parameters"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    assert not [a for a in vars(det) if a.endswith("_")], "learned state appears only in fit"


def test_fit_returns_self_and_score_shape(factory: DetectorFactory, planted) -> None:
    X, _ = planted
    det = factory(0)
    assert det.fit(X) is det
    s = det.score(X[:17])
    assert s.shape == (17,) and s.dtype == np.float64 and np.isfinite(s).all()


def test_no_input_mutation(factory: DetectorFactory, planted) -> None:
    X, _ = planted
    X = X.copy()
    X[::7, 2] = np.nan
    before = X.copy()
    det = factory(0).fit(X)
    det.score(X)
    assert np.array_equal(X, before, equal_nan=True)


def test_pickle_round_trip_scores_identically(factory: DetectorFactory, planted) -> None:
    X, _ = planted
    det = factory(0).fit(X)
    clone = pickle.loads(pickle.dumps(det))
    assert np.array_equal(det.score(X), clone.score(X))


def test_same_seed_same_scores(factory: DetectorFactory, planted) -> None:
    X, _ = planted
    assert np.array_equal(factory(7).fit(X).score(X), factory(7).fit(X).score(X))


def test_row_scores_do_not_depend_on_the_batch(factory: DetectorFactory, planted) -> None:
    """Streaming scores a few rows at a time, training thousands: same row, same score."""
    X, _ = planted
    det = factory(0).fit(X)
    whole = det.score(X)
    pieces = np.concatenate([det.score(X[i : i + 3]) for i in range(0, 60, 3)])
    np.testing.assert_allclose(pieces, whole[:60], rtol=0, atol=1e-12)


def test_missing_features_are_handled(factory: DetectorFactory, planted) -> None:
    X, _ = planted
    rng = np.random.default_rng(1)
    X = X.copy()
    X[rng.random(X.shape) < 0.1] = np.nan
    X[0, :] = np.nan  # a row with nothing known
    X[:, 4] = np.nan  # a feature never seen
    X[1, 1] = np.inf
    det = factory(0).fit(X)
    assert np.isfinite(det.score(X)).all()


def test_roc_auc_above_floor_on_planted_anomalies(factory: DetectorFactory, planted) -> None:
    X, y = planted
    assert roc_auc_score(y, factory(0).fit(X).score(X)) > AUC_FLOOR


def _detector_classes() -> set[type]:
    classes: set[type] = set()
    for mod in pkgutil.iter_modules(detector.__path__):
        module = importlib.import_module(f"detector.{mod.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                obj.__module__ == module.__name__
                and callable(getattr(obj, "score", None))
                and callable(getattr(obj, "fit", None))
                and not getattr(obj, "_is_protocol", False)
            ):
                classes.add(obj)
    return classes


def test_registry_lists_every_detector_class() -> None:
    registered = {type(f(0)) for f in DETECTORS}
    assert _detector_classes() <= registered


_FORBIDDEN_ROOTS = {
    "pipelines", "models", "inference_node",  # import rule: detector imports nothing else
    "time", "datetime", "logging", "random", "os", "socket", "subprocess",  # purity
}  # fmt: skip


@pytest.mark.parametrize(
    "path", sorted(Path(detector.__file__).parent.glob("*.py")), ids=lambda p: p.name
)
def test_detector_modules_are_pure(path: Path) -> None:
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert not roots & _FORBIDDEN_ROOTS
