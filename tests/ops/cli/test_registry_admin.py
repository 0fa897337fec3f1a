"""``tongban registry add-region|add-service|allow|deny|remove-region|show``: the authority's edits of
a real signed registry, each signed and versioned, refused edits leaving the file as it was."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.cli import tongban
from tongban.core.registry import Registry
from tongban.ops.devstate import DEV_REGIONS, init_state
from tongban.runtime.node import parse_public_key

QD = "370200"


async def test_a_new_region_joins_is_allowed_and_leaves(tmp_path: Path) -> None:
    state = init_state(tmp_path / "state", DEV_REGIONS)
    reg, root = str(state.root / "registry.signed"), str(state.root / "root.key")
    version = Registry.from_signed(
        Path(reg).read_bytes(), [parse_public_key((state.root / "root.pub").read_text())]
    ).version
    edit = ["--file", reg, "--root-key", root]

    steps = [
        [
            "registry",
            "add-region",
            *edit,
            "--region",
            QD,
            "--name",
            "青岛市",
            "--gateway-address",
            "gw.qd.example:8443",
        ],
        ["registry", "add-service", *edit, "--region", QD, "--service", "SBJFJLCX0001"],
        [
            "registry",
            "allow",
            *edit,
            "--caller-region",
            "440300",
            "--provider-region",
            QD,
            "--service",
            "SBJFJLCX0001",
        ],
    ]
    for i, step in enumerate(steps, 1):
        code, out, err = await tongban(*step)
        assert code == 0, err
        assert out.startswith(f"registry version {version + i}: ")

    registry = Registry.from_signed(
        Path(reg).read_bytes(), [parse_public_key((state.root / "root.pub").read_text())]
    )
    assert registry.version == version + 3
    assert registry.provides(QD, "SBJFJLCX0001")
    assert registry.allows("440300", "szgov-ywtb", "SBJFJLCX0001", QD)
    assert not registry.allows("320200", "wx-ywtb", "SBJFJLCX0001", QD)

    code, out, _ = await tongban("registry", "show", "--file", reg)
    assert code == 0
    assert f"  {QD} 青岛市  gateway gw.qd.example:8443" in out
    assert "provides 1 services: SBJFJLCX0001" in out
    assert f"  440300/* → SBJFJLCX0001 of {QD}" in out

    code, out, _ = await tongban("registry", "remove-region", *edit, "--region", QD)
    assert code == 0 and f"removed region {QD} and 1 access rule(s)" in out
    registry = Registry.from_signed(
        Path(reg).read_bytes(), [parse_public_key((state.root / "root.pub").read_text())]
    )
    assert registry.region(QD) is None and registry.version == version + 4


async def test_a_refused_edit_leaves_the_registry_as_it_was(tmp_path: Path) -> None:
    state = init_state(tmp_path / "state", DEV_REGIONS)
    reg = state.root / "registry.signed"
    before = reg.read_bytes()
    edit = ["--file", str(reg), "--root-key", str(state.root / "root.key")]
    for step, says in [
        (
            ["registry", "allow", *edit, "--caller-region", "440300", "--provider-region", QD],
            "370200 is not in",
        ),
        (["registry", "add-region", *edit, "--region", "440300", "--name", "深圳市"], "already in"),
        (
            ["registry", "add-service", *edit, "--region", "320200", "--service", "NOSUCHITEM01"],
            "not a catalogue",
        ),
        (
            [
                "registry",
                "deny",
                *edit,
                "--caller-region",
                "440300",
                "--provider-region",
                "320200",
                "--caller-system",
                "nobody",
            ],
            "no access rule",
        ),
    ]:
        code, _, err = await tongban(*step)
        assert code == 2 and says in err and "Traceback" not in err, err
    assert reg.read_bytes() == before
