"""Unit tests of kernel/_permissions: the exact grants a policy gives Deno and what
``op_check_permission`` answers (the edge cases test_plane_units.py does not pin)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from krepis import InvalidTypeError, ValidationError
from krepis.kernel import PermissionPolicy
from krepis.kernel._permissions import _split_host


@pytest.mark.parametrize("port", ["²", "١", "٨٠", "000080", "0" * 5000 + "1", "9" * 5000, "+80", " 80", "-1"])
def test_a_port_of_other_digits_or_too_long_is_named(port: str) -> None:
    """A port is 1 to 5 ASCII digits: a superscript digit, a digit of another script, six
    digits (even with leading zeros) or thousands are refused with the rule, never a bare
    ``int()`` error."""
    entry = f"h:{port}"
    with pytest.raises(ValidationError) as caught:
        _split_host(entry)
    assert str(caught.value) == f"net target {entry!r}: port {port!r} is not a number in 1…65535"
    with pytest.raises(ValidationError):
        PermissionPolicy(net=[entry])


@pytest.mark.parametrize(("entry", "expected"), [
    ("h:080", ("h", 80)),          # leading zeros are the same port
    ("h:00001", ("h", 1)),
    ("\th:8\n", ("h", 8)),         # surrounding white space of every kind is stripped
    (" h", ("h", None)),
    ("h ", ("h", None)),
    ("[::1]:65535", ("[::1]", 65535)),
    ("[2001:DB8::1]:1", ("[2001:DB8::1]", 1)),  # an IPv6 address keeps its letters' case
    ("a", ("a", None)),
    ("a-b.c9", ("a-b.c9", None)),
    ("1.2.3.4:22", ("1.2.3.4", 22)),
    ("x" * 253, ("x" * 253, None)),
])
def test_more_net_targets(entry: str, expected: tuple[str, int | None]) -> None:
    assert _split_host(entry) == expected


@pytest.mark.parametrize(("entry", "reason"), [
    ("x" * 254, f"{'x' * 254!r} is not a host name or address"),
    ("-a", "'-a' is not a host name or address"),
    ("a-", "'a-' is not a host name or address"),
    ("", "'' is not a host name or address"),
    (":80", "'' is not a host name or address"),
    ("h:", "port '' is not a number in 1…65535"),
    ("h:65536", "port '65536' is not a number in 1…65535"),
    ("[::1]80", "expected ':port' after ']'"),
    ("[::1]::80", "port ':80' is not a number in 1…65535"),
    ("[]", "'' is not an IPv6 address"),
    ("[1.2.3.4]", "'1.2.3.4' is not an IPv6 address"),
    ("::1", "write an IPv6 address as [addr] or [addr]:port"),
])
def test_more_bad_net_targets_are_named(entry: str, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _split_host(entry)
    assert str(caught.value) == f"net target {entry!r}: {reason}"


def test_net_targets_in_the_constructor_are_checked_and_kept_as_given() -> None:
    with pytest.raises(ValidationError, match=r"^net target 'a b': 'a b' is not a host name or address$"):
        PermissionPolicy(net=["ok.example", "a b"])
    with pytest.raises(InvalidTypeError, match=r"^a net target must be a str, got NoneType$"):
        PermissionPolicy(net=[None])  # type: ignore[list-item]
    policy = PermissionPolicy(net=["Example.COM:443"])
    policy.allow_net(" [::1] ")
    assert policy.net == ["Example.COM:443", " [::1] "]
    with pytest.raises(ValidationError):
        policy.allow_net("bad host")
    assert policy.net == ["Example.COM:443", " [::1] "]  # a refused host is not added


def test_roots_in_the_constructor_are_checked_made_absolute_and_pinned(tmp_path: Path) -> None:
    for kind in ("read", "write"):
        with pytest.raises(ValidationError, match=r"^permission root '/x,y' contains ','"):
            PermissionPolicy(**{kind: [str(tmp_path), "/x,y"]})
        with pytest.raises(ValidationError, match=r"^permission root '/' resolves to '/'"):
            PermissionPolicy(**{kind: ["/"]})
        with pytest.raises(InvalidTypeError, match=r"^permission root must be a path, got bytes$"):
            PermissionPolicy(**{kind: [b"/tmp"]})  # type: ignore[arg-type]
    policy = PermissionPolicy(read=[str(tmp_path / "r" / ".." / "r")], write=[tmp_path / "w"])  # type: ignore[list-item]
    assert policy.read == [str(tmp_path / "r")]
    assert policy.write == [str(tmp_path / "w")]
    assert all(isinstance(root, str) for root in policy.write)


def test_a_root_of_a_user_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    policy = PermissionPolicy()
    policy.allow_read("~/data")
    policy.allow_write(Path("~") / "out")
    assert policy.read == [str(tmp_path / "data")]
    assert policy.write == [str(tmp_path / "out")]
    assert policy.check("read", str(tmp_path / "data" / "f"))
    assert not policy.check("write", str(tmp_path / "data" / "f"))


def test_a_root_resolving_to_slash_is_refused_by_the_name_given(tmp_path: Path) -> None:
    link = tmp_path / "to-root"
    link.symlink_to("/")
    policy = PermissionPolicy()
    with pytest.raises(ValidationError) as caught:
        policy.allow_write(link)
    assert str(caught.value) == (f"permission root {str(link)!r} resolves to '/', which would grant "
                                 "every path")
    assert policy.write == []


def test_roots_are_resolved_sorted_without_repeats_and_drop_only_the_moved_ones(tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        (tmp_path / name).mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "a")
    via = tmp_path / "via"
    via.symlink_to(tmp_path / "d")
    policy = PermissionPolicy(read=[str(tmp_path / "c"), str(link), str(via), str(tmp_path / "c")])
    policy.allow_read(tmp_path / "b")
    assert policy.roots("read") == [str(tmp_path / n) for n in ("a", "b", "c", "d")]
    assert policy.roots("write") == []
    link.unlink()
    link.symlink_to(tmp_path / "b")  # the first root moved: it alone grants nothing now
    assert policy.roots("read") == [str(tmp_path / n) for n in ("b", "c", "d")]
    assert policy.check("read", str(tmp_path / "c" / "f"))
    assert policy.check("read", str(tmp_path / "d" / "f"))
    assert policy.check("read", str(via / "f"))
    assert not policy.check("read", str(tmp_path / "a" / "f"))
    assert policy.deno_flags() == [f"--allow-read={tmp_path / 'b'},{tmp_path / 'c'},{tmp_path / 'd'}"]
    with pytest.raises(ValidationError) as caught:
        policy.roots("net")
    assert str(caught.value) == "unknown root kind 'net'; use 'read' or 'write'"


def test_a_pinned_root_grants_again_when_it_resolves_as_before(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "a")
    policy = PermissionPolicy(write=[str(link)])
    link.unlink()
    link.symlink_to(tmp_path / "b")
    assert policy.roots("write") == [] and not policy.check("write", str(link / "f"))
    link.unlink()
    link.symlink_to(tmp_path / "a")
    assert policy.roots("write") == [str(tmp_path / "a")]
    assert policy.check("write", str(tmp_path / "a" / "f"))


def test_check_compares_resolved_paths(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "out").symlink_to(tmp_path / "secret")
    policy = PermissionPolicy(write=[str(root) + os.sep])
    assert policy.check("write", str(root))
    assert policy.check("write", str(root) + os.sep)
    assert policy.check("write", str(root / "sub" / ".." / "new"))
    assert policy.check("write", str(root / "missing" / "deeper"))
    assert not policy.check("write", str(root / ".." / "secret" / "f"))
    assert not policy.check("write", str(root / "out" / "f"))  # a symlink out of the root
    assert not policy.check("write", str(tmp_path))
    assert not policy.check("write", str(tmp_path / "dat"))
    assert not policy.check("read", str(root / "sub"))


def test_check_net_matches_host_and_port_exactly() -> None:
    policy = PermissionPolicy(net=["any.example", "one.example:443", "[::1]:8080"])
    assert policy.check("net", "any.example")
    assert policy.check("net", "ANY.example:1")
    assert policy.check("net", "any.example:65535")
    assert policy.check("net", "one.example:443")
    assert not policy.check("net", "one.example")       # a port grant is not any port
    assert not policy.check("net", "one.example:444")
    assert policy.check("net", "[::1]:8080")
    assert not policy.check("net", "[::1]")
    assert not policy.check("net", "[::2]:8080")
    assert not policy.check("net", "sub.any.example")
    assert not PermissionPolicy().check("net", "any.example")
    with pytest.raises(ValidationError, match=r"^net target 'h:0': port '0' is not a number"):
        policy.check("net", "h:0")


def test_check_refuses_a_relative_or_empty_path_even_without_roots() -> None:
    policy = PermissionPolicy()
    assert policy.check("read", "/etc/passwd") is False
    assert policy.check("write", "") is False
    assert policy.check("write", "/a\x00") is False
    with pytest.raises(ValidationError, match=r"^path 'etc' is relative"):
        policy.check("write", "etc")
    with pytest.raises(ValidationError, match=r"^unknown permission 'READ'"):
        policy.check("READ", "/etc")


def test_deno_flags_grant_exactly_the_policy(tmp_path: Path) -> None:
    assert PermissionPolicy().deno_flags() == []
    (tmp_path / "r").mkdir()
    (tmp_path / "w").mkdir()
    policy = PermissionPolicy(read=[str(tmp_path / "r")], write=[str(tmp_path / "w")],
                              net=["b.example", " A.example:443 ", "b.example", "[::1]:80", "[::1]"])
    assert policy.deno_flags() == [
        f"--allow-read={tmp_path / 'r'}",
        f"--allow-write={tmp_path / 'w'}",
        "--allow-net=[::1],[::1]:80,a.example:443,b.example",
    ]
    assert PermissionPolicy(net=["h"]).deno_flags() == ["--allow-net=h"]
    only_write = PermissionPolicy(write=[str(tmp_path / "w"), str(tmp_path / "r")])
    assert only_write.deno_flags() == [f"--allow-write={tmp_path / 'r'},{tmp_path / 'w'}"]
