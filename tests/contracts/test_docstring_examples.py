"""Every public function and class of crossent has a docstring in the one template, and
the Example of each one runs and prints what it says.

The template (see ``crossent.core.multiclass.cross_entropy`` for a full one)::

    Summary line.

    The formula (plain text in a literal block).

    Args:
        name: ...
    Shape:
        ...
    Returns:
        ...
    Example:
        >>> import torch, crossent as ce
        >>> ...
    References:
        Author et al., "Title", year.

``Shape`` and ``References`` are written where they apply; ``Args``, ``Returns`` and a
runnable ``Example`` are required (the exemptions are in ``EXEMPT`` below, each with its
reason). The examples run under ``doctest`` here, so the README's test command runs them.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import re
import time

import pytest
import torch.distributed as dist

# The public surface whose docstrings follow the template: the module, and the names of it
# that are public (its __all__; functions and classes only, not constants or modules).
PUBLIC_MODULES = [
    "crossent",
    "crossent.nn",
    "crossent.reference",
    "crossent.distributed",  # alias of crossent.core.collectives
    "crossent.core.collectives",
    "crossent.partial_fc",  # alias of crossent.margin.partial_fc
    "crossent.margin.partial_fc",
    "crossent.contrastive",
    "crossent.retrieval",
    "crossent.integrations.transformers",
]

# Names exempt from a section, and why. A class documents its constructor's arguments in
# its own docstring (``Args:``); the exemptions are for what has no arguments or returns.
EXEMPT: dict[str, set[str]] = {
    # exceptions: raised, not called; their docstring says when and shows one being raised
    "ArgumentError": {"Args", "Returns"},
    "ArgumentTypeError": {"Args", "Returns"},
    "TargetIndexError": {"Args", "Returns"},
    # a NamedTuple returned by cross_entropy(return_stats=True): its fields are "Attributes"
    "CrossEntropyStats": {"Args", "Returns"},
    "Traffic": {"Args", "Returns"},
}

REQUIRED = ("Args", "Returns", "Example")


def _public_objects():
    seen: dict[int, tuple[str, object]] = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue  # constants (DATA_PARALLEL, LOCAL_ERRORS) and the reference module
            seen.setdefault(id(obj), (f"{module_name}.{name}", obj))
    return sorted(seen.values(), key=lambda item: item[0])


PUBLIC = _public_objects()


def _sections(doc: str) -> set[str]:
    return set(re.findall(r"^([A-Z][A-Za-z ]*):\s*$", doc, flags=re.MULTILINE))


@pytest.mark.parametrize("qualname,obj", PUBLIC, ids=[q for q, _ in PUBLIC])
def test_public_name_has_template_docstring(qualname, obj):
    doc = inspect.getdoc(obj)
    assert doc, f"{qualname} has no docstring"
    lines = doc.splitlines()
    assert lines[0].strip() and (len(lines) == 1 or not lines[1].strip()), (
        f"{qualname}: the docstring must start with a one-line summary and a blank line"
    )
    sections = _sections(doc)
    if inspect.isclass(obj) and "Args" not in sections and obj.__init__.__doc__:
        # a class may document its constructor's arguments in __init__'s docstring
        sections |= _sections(inspect.getdoc(obj.__init__) or "")
    short = qualname.rsplit(".", 1)[1]
    missing = [s for s in REQUIRED if s not in sections and s not in EXEMPT.get(short, set())]
    assert not missing, f"{qualname}: docstring lacks the section(s) {missing}"
    example = doc.split("Example:", 1)[1] if "Example:" in doc else ""
    assert ">>>" in example, f"{qualname}: the Example section has no doctest (>>>)"


def test_exemptions_are_public_names():
    names = {q.rsplit(".", 1)[1] for q, _ in PUBLIC}
    assert set(EXEMPT) <= names, sorted(set(EXEMPT) - names)


# --- the examples run --------------------------------------------------------------------
def _doctests():
    modules = sorted({obj.__module__ for _, obj in PUBLIC} | set(PUBLIC_MODULES))
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        for test in finder.find(module):
            if test.examples:
                tests.append(test)
    return sorted(tests, key=lambda t: t.name)


DOCTESTS = _doctests()


def test_every_public_example_is_collected():
    names = {t.name for t in DOCTESTS}
    for qualname, obj in PUBLIC:
        full = f"{obj.__module__}.{obj.__qualname__}"
        assert full in names, f"{qualname}: its Example is not found by doctest ({full})"


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_example(test):
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    report: list[str] = []
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    hf = test.name.startswith("crossent.integrations.transformers")
    if hf:
        pytest.importorskip("transformers")
    start = time.perf_counter()
    try:
        result = runner.run(test, out=report.append, clear_globs=True)
    finally:
        # the collectives' examples make a one-rank group; never leak it to other tests
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    elapsed = time.perf_counter() - start
    assert result.failed == 0, "".join(report)
    # examples are meant to be small (well under 0.2 s once warm); the bound is generous
    # because the first fused call of a process pays a one-off start-up of several seconds
    # (importing transformers alone can take half a minute on a loaded machine)
    assert hf or elapsed < 30.0, f"{test.name}: the example took {elapsed:.2f} s (keep it small)"
