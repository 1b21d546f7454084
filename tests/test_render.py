"""Value rendering: exact repr for ordinary values, visible markers for everything else."""

import pytest

from opencwm.trace.values import Renderer, truncation_marker


def test_ordinary_values_render_as_exact_repr():
    r = Renderer()
    for value in [0, -3, 2.5, "a'b\"c\n", b"\x00x", None, True, [1, (2, 3)], {"k": {1, 2}},
                  frozenset(), range(3), 1 + 2j]:
        assert r.render(value) == repr(value)
        assert eval(r.render(value)) == value
    assert r.render(float("nan")) == "nan"


def test_addresses_are_renumbered_by_first_appearance():
    class Thing:
        pass

    a, b = Thing(), Thing()
    r = Renderer()
    first, second, again = r.render(a), r.render(b), r.render(a)
    assert first.endswith("object at 0x1>") and second.endswith("object at 0x2>")
    assert again == first
    assert hex(id(a)) not in first


def test_raising_and_recursive_repr_become_placeholders():
    class Bad:
        def __repr__(self):
            raise RuntimeError("no")

    class Loop:
        def __repr__(self):
            return repr(self)

    r = Renderer()
    assert r.render(Bad()) == "<unrepresentable Bad: RuntimeError>"
    assert r.render(Loop()) == "<unrepresentable Loop: RecursionError>"


def test_long_values_are_cut_with_a_visible_marker():
    r = Renderer(max_chars=50)
    text = r.render("x" * 1000)
    assert text == repr("x" * 1000)[:50] + truncation_marker(1002 - 50)
    huge = list(range(10**6))
    rendered = r.render(huge)
    assert len(rendered) < 200 and "items>" in rendered and rendered.startswith("[0, 1, 2")

    class Enormous:
        def __repr__(self):
            return "y" * 10_000

    out = r.render(Enormous())
    assert out == "y" * 50 + truncation_marker(10_000 - 50)


def test_fast_and_itemwise_cuts_agree():
    """Huge containers of simple values take a C-speed path; it must render exactly like the item-by-item one."""
    r = Renderer(max_chars=120)
    for value in [list(range(1000)), tuple(range(-500, 500)), [True, None, 2.5] * 300, dict.fromkeys(range(900), 0)]:
        fast = r.render(value)
        if isinstance(value, dict):
            slow = r._cut_items("{", "}", (f"{k!r}: {v!r}" for k, v in value.items()), len(value))
        else:
            opening, closing = ("[", "]") if isinstance(value, list) else ("(", ")")
            slow = r._cut_items(opening, closing, (repr(v) for v in value), len(value))
        assert fast == slow and len(fast) <= 120
        shown = fast.rsplit(", ...<+", 1)[0][1:]
        if isinstance(value, dict):
            head = eval(f"{{{shown}}}")
            assert list(head.items()) == list(value.items())[: len(head)]  # a true prefix of the real items
        else:
            head = eval(f"[{shown}]")
            assert head == list(value)[: len(head)]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

simple = st.one_of(st.integers(-3, 3), st.booleans(), st.none(), st.sampled_from(["a", "b", ""]), st.just(b"x"),
                   st.sampled_from([0.0, -0.0, 1.0]))
mutation = st.tuples(st.sampled_from(["set", "append", "pop", "insert"]), st.integers(0, 400), simple)


@settings(max_examples=200, deadline=None)
@given(st.lists(simple, max_size=400), st.lists(mutation, max_size=20), st.sampled_from([60, 1000]))
def test_fingerprint_never_hides_a_change_of_rendering(start, mutations, max_chars):
    """If the renderer says a container is unchanged, its rendering is indeed the same as before."""
    r = Renderer(max_chars=max_chars)
    for container in (list(start), {i: v for i, v in enumerate(start[:40])}):
        text = r.render(container)
        proof = r.fingerprint(container, text)
        for op, index, value in mutations:
            if isinstance(container, list):
                if op == "set" and container:
                    container[index % len(container)] = value
                elif op == "append":
                    container.append(value)
                elif op == "pop" and container:
                    container.pop(index % len(container))
                elif op == "insert":
                    container.insert(index, value)
            else:
                if op == "pop":
                    container.pop(index % 50, None)
                else:
                    container[index % 50] = value
            if proof is not None and r.unchanged(container, proof):
                assert r.render(container) == text
            text = r.render(container)
            proof = r.fingerprint(container, text)


@pytest.mark.parametrize("max_chars", [60, 61, 62, 200])
@pytest.mark.parametrize("shift", range(7))
def test_a_cut_lists_proof_covers_every_item_its_rendering_depends_on(max_chars, shift):
    """Every single-item change that changes the rendering of a long list is seen by the proof, including changes
    to the first item left out, whose length decides where the rendering is cut."""
    r = Renderer(max_chars=max_chars)
    original = ([7, 10, True, -3, None, "ab", 0] * 41)[shift:]
    text = r.render(original)
    proof = r.fingerprint(original, text)
    assert "items>]" in text and proof[2] < max_chars // 3  # only the shown head (+1) is serialised
    for index in range(len(original)):
        for value in (1, 123456, "x", "a much longer string", False, None):
            changed = list(original)
            changed[index] = value
            if r.render(changed) != text:
                assert not r.unchanged(changed, proof), (index, value)


nested = st.recursive(simple, lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                                                      st.dictionaries(st.sampled_from(["k", 1, True]), inner,
                                                                      max_size=3)), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(nested, min_size=1, max_size=6), st.lists(st.tuples(st.integers(0, 50), nested), max_size=8))
def test_a_proof_sees_changes_inside_nested_containers(start, changes):
    """Changes deep inside (through a list shared with the outer container) and swaps between equal values of
    other types (1/True/1.0, 0.0/-0.0) are never hidden by a proof."""
    r = Renderer()
    shared = list(start)
    for container in (shared, (shared, 7), {"x": shared}, [shared, shared]):
        text = r.render(container)
        proof = r.fingerprint(container, text)
        assert proof is not None  # only builtin containers of simple values here: always provable
        for index, value in changes:
            shared[index % len(shared)] = value
            if r.unchanged(container, proof):
                assert r.render(container) == text
            text = r.render(container)
            proof = r.fingerprint(container, text)
        shared[:] = start


def test_a_proof_refuses_values_whose_repr_is_user_code():
    class Loud(list):
        def __repr__(self):
            return "loud"

    r = Renderer()
    assert r.fingerprint([Loud()]) is None and r.fingerprint(Loud()) is None
    assert r.fingerprint([1, 2]) is not None and not r.unchanged((1, 2), r.fingerprint([1, 2]))
