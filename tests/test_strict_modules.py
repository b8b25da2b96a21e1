"""The device core's and prob's Equinox modules follow the strict-module rules.

They are declared ``class X(eqx.Module, strict=True)``. Equinox 0.11-0.12 enforced
strict modules at class creation; from 0.13 the argument is accepted but no longer
checked, so this test checks the same rules itself:

* a strict module inherits only from ``eqx.Module`` and other strict modules, and
  never from a concrete one (abstract or final);
* abstract modules (abstract methods or ``AbstractVar``/``AbstractClassVar``) are
  named ``Abstract*`` / ``_Abstract*``, concrete ones are not;
* a concrete method is never overridden (only abstract ones are implemented);
* fields and a custom ``__init__`` live on one class of a hierarchy.
"""

import abc
import ast
import dataclasses
import importlib
import inspect
import pkgutil
from pathlib import Path

import equinox as eqx
import pytest

import jaxgrid

PACKAGES = ("jaxgrid.core", "jaxgrid.prob")
ROOT = Path(jaxgrid.__file__).parent


def _modules():
    for pkg in PACKAGES:
        mod = importlib.import_module(pkg)
        yield mod
        for info in pkgutil.iter_modules(mod.__path__, pkg + "."):
            yield importlib.import_module(info.name)


def _module_classes():
    """Every `eqx.Module` subclass defined in the core and prob packages."""
    out = {}
    for mod in _modules():
        for obj in vars(mod).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, eqx.Module)
                and obj.__module__ == mod.__name__
            ):
                out[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return out


def _is_abstract(cls) -> bool:
    return bool(
        cls.__abstractmethods__
        or getattr(cls, "__abstractvars__", ())
        or getattr(cls, "__abstractclassvars__", ())
    )


def _custom_init(cls) -> bool:
    """A hand-written ``__init__`` on ``cls`` itself (not the dataclass-generated one)."""
    init = cls.__dict__.get("__init__")
    return inspect.isfunction(init) and init.__code__.co_filename != "<string>"


def strict_violations(classes) -> list[str]:
    """The strict-module rules broken by ``classes`` (see module docs)."""
    known = set(classes)
    bad = []
    for cls in classes:
        name = cls.__qualname__
        abstract = _is_abstract(cls)
        if abstract != cls.__name__.startswith(("Abstract", "_Abstract")):
            kind = "abstract" if abstract else "concrete"
            bad.append(f"{name}: a {kind} module named {cls.__name__!r}")
        for base in cls.__bases__:
            if base is eqx.Module:
                continue
            if base not in known:
                bad.append(f"{name}: inherits from {base.__name__}, not a strict module")
                continue
            if not _is_abstract(base):
                bad.append(f"{name}: inherits from the concrete {base.__name__}")
            if dataclasses.fields(base) or _custom_init(base):
                if len(dataclasses.fields(cls)) != len(dataclasses.fields(base)):
                    bad.append(f"{name}: adds fields to {base.__name__}, which has some")
                if _custom_init(cls):
                    bad.append(f"{name}: adds an __init__ to {base.__name__}")
        for k, v in cls.__dict__.items():
            if k.startswith("__") or not inspect.isfunction(v):
                continue
            if getattr(v, "__isabstractmethod__", False):
                continue
            for base in cls.__bases__:
                old = getattr(base, k, None)
                if old is None:
                    continue
                if not inspect.isfunction(old):
                    bad.append(f"{name}.{k}: a method overriding a non-method of {base.__name__}")
                elif not getattr(old, "__isabstractmethod__", False):
                    bad.append(f"{name}.{k}: overrides the concrete {base.__name__}.{k}")
    return bad


def test_core_and_prob_modules_follow_the_strict_rules():
    classes = _module_classes()
    assert len(classes) >= 20  # likelihoods, priors, GridData, step types
    assert strict_violations(list(classes.values())) == []


def test_every_core_and_prob_module_is_declared_strict():
    classes = _module_classes()
    declared = {}
    for path in [*(ROOT / "core").glob("*.py"), *(ROOT / "prob").glob("*.py")]:
        mod = "jaxgrid." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                strict = any(
                    kw.arg == "strict" and isinstance(kw.value, ast.Constant) and kw.value.value
                    for kw in node.keywords
                )
                declared[f"{mod}.{node.name}"] = strict
    not_strict = sorted(name for name in classes if not declared.get(name, False))
    assert not_strict == []


def test_the_likelihood_and_prior_calls_are_final():
    from jaxgrid.prob import AbstractLikelihood, AbstractObservableDependentPrior, AbstractPrior

    assert "log_likelihood_and_chi2" in AbstractLikelihood.__abstractmethods__
    assert "log_likelihood" not in AbstractLikelihood.__abstractmethods__
    for abstract in (AbstractLikelihood, AbstractPrior, AbstractObservableDependentPrior):
        for cls in (c for c in _module_classes().values() if issubclass(c, abstract)):
            if not _is_abstract(cls):
                assert "log_likelihood" not in cls.__dict__, cls


# -------------------------------------------------- the checker catches each rule
class AbstractBase(eqx.Module):
    @abc.abstractmethod
    def f(self): ...

    def g(self):
        return 0


class Concrete(AbstractBase):
    x: int = 0

    def f(self):
        return 1


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: type("Named", (AbstractBase,), {}), "abstract module named 'Named'"),
        (
            lambda: type("AbstractNamed", (AbstractBase,), {"f": lambda self: 1}),
            "concrete module named 'AbstractNamed'",
        ),
        (lambda: type("Sub", (Concrete,), {}), "inherits from the concrete Concrete"),
        (
            lambda: type("Override", (AbstractBase,), {"f": lambda self: 1, "g": lambda self: 2}),
            "overrides the concrete AbstractBase.g",
        ),
        (
            lambda: type("AbstractMore", (AbstractBase,), {"__annotations__": {"y": int}}),
            None,
        ),
    ],
)
def test_the_checker_catches_each_rule(make, message):
    cls = make()
    bad = strict_violations([AbstractBase, Concrete, cls])
    if message is None:  # an abstract class may add fields while its bases have none
        assert bad == []
    else:
        assert any(message in b for b in bad), bad


def test_the_checker_catches_fields_split_over_two_classes():
    class AbstractWithField(eqx.Module):
        x: int

        @abc.abstractmethod
        def f(self): ...

    class Final(AbstractWithField):
        y: int = 0

        def f(self):
            return 1

    bad = strict_violations([AbstractWithField, Final])
    assert any("adds fields to AbstractWithField" in b for b in bad), bad
