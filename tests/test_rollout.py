"""Staged rollouts, end to end: ``migrate --tenant-file / --match`` (which tenants a run
covers), ``--canary N|P% [--then-all]`` (which go first) and ``status`` showing the
tenants ahead of the rest."""

from __future__ import annotations

import hashlib
import json
import logging
import signal
from pathlib import Path

import pytest

import mtm
from _reliability import spawn, wait_until, waiting_on_gate
from conftest import Project
from mtm.errors import UsageError
from mtm.results import Rollout, SchemaStatus
from mtm.rollout import ahead, md5_order, parse_canary
from mtm.rolloutreport import ahead_line
from test_reliability_locks import GATE, gate

TENANTS = ["eu_alpha", "eu_beta", "eu_gamma", "us_delta", "us_eps", "us_zeta", "ap_eta"]


def _fleet(project: Project, tenants: list[str] = TENANTS) -> None:
    """Tenants at 0001; 0002 written after them, so every tenant has it pending."""
    project.write("tenant", "0001_t1.sql", "CREATE TABLE t1 (id int);")
    with mtm.connect(project.config) as db:
        for name in tenants:
            db.create(name)
    project.write("tenant", "0002_t2.sql", "CREATE TABLE t2 (id int);")


def _applied(project: Project) -> dict[str, list[str]]:
    """Each tenant's ledger, read from the ledgers themselves."""
    out = {}
    for (schema,) in project.query("SELECT schema_name FROM public.tenants ORDER BY 1"):
        rows = project.query(f'SELECT name FROM "{schema}".mtm_migrations ORDER BY name')
        out[schema] = [r[0] for r in rows]
    return out


def _md5_order(project: Project, among: list[str] | None = None) -> list[str]:
    """The tenants in PostgreSQL's md5(schema_name) order: what the canaries must follow."""
    rows = project.query("SELECT schema_name FROM public.tenants ORDER BY md5(schema_name)")
    return [r[0] for r in rows if among is None or r[0] in among]


def _planned(project: Project, *args: str, input: str | None = None) -> list[str]:
    r = project.cli("migrate", "--dry-run", "--json", *args, input=input)
    assert r.exit_code == 0, r.output
    return sorted(json.loads(r.output)["plan"]["tenants"])


# --- selection ---------------------------------------------------------------------------


def test_tenant_file_match_and_tenant_intersect(project: Project, tmp_path: Path) -> None:
    _fleet(project)
    listed = tmp_path / "tenants.txt"
    listed.write_text(
        "# wave 1\n\neu_alpha\n  eu_beta   # trailing comment\nus_delta\nap_eta\neu_alpha\n"
    )
    assert _planned(project, "--tenant-file", str(listed)) == [
        "ap_eta",
        "eu_alpha",
        "eu_beta",
        "us_delta",
    ]
    assert _planned(project, "--match", "eu_*") == ["eu_alpha", "eu_beta", "eu_gamma"]
    assert _planned(project, "--match", "??_[ae]*") == ["ap_eta", "eu_alpha", "us_eps"]
    both = _planned(project, "--tenant-file", str(listed), "--match", "eu_*")
    assert both == ["eu_alpha", "eu_beta"]
    three = ["--tenant-file", str(listed), "--match", "eu_*", "--tenant", "eu_beta"]
    assert _planned(project, *three) == ["eu_beta"]
    assert _planned(project, "--tenant", "us_zeta", "--match", "us_*") == ["us_zeta"]
    bom = tmp_path / "saved-by-an-editor.txt"
    bom.write_text("\ufeffus_eps\r\nus_zeta\r\n", encoding="utf-8")  # BOM, CRLF
    assert _planned(project, "--tenant-file", str(bom)) == ["us_eps", "us_zeta"]
    # - reads the list from standard input
    assert _planned(project, "--tenant-file", "-", input="us_eps\nus_zeta\n") == [
        "us_eps",
        "us_zeta",
    ]
    r = project.cli("migrate", "--tenant-file", str(listed), "--match", "eu_*")
    assert r.exit_code == 0, r.output
    applied = _applied(project)
    assert [s for s, names in applied.items() if "0002_t2" in names] == ["eu_alpha", "eu_beta"]


def test_match_is_case_sensitive_and_an_empty_selection_is_refused(project: Project) -> None:
    _fleet(project)
    project.write("public", "0001_p.sql", "CREATE TABLE p (id int);")
    for args, message in [
        (
            ["--match", "EU_*"],
            "error: no tenant is selected by --match 'EU_*'; nothing was run",
        ),
        (
            ["--match", "eu_*", "--tenant", "us_eps"],
            "error: no tenant is selected by --tenant us_eps together with --match 'eu_*'; "
            "nothing was run",
        ),
    ]:
        r = project.cli("migrate", *args)
        assert r.exit_code == 2, r.output
        assert r.output.strip() == message
    assert project.scalar("SELECT to_regclass('public.p')") is None  # not even public ran
    assert all(names == ["0001_t1"] for names in _applied(project).values())


def test_unknown_names_are_refused_and_nothing_runs(project: Project, tmp_path: Path) -> None:
    _fleet(project)
    project.write("public", "0001_p.sql", "CREATE TABLE p (id int);")
    listed = tmp_path / "wave.txt"
    listed.write_text("eu_alpha\n" + "".join(f"ghost_{i}\n" for i in range(7)))
    one = tmp_path / "one.txt"
    one.write_text("eu_alpha\nghost\n")
    bad = tmp_path / "bad.txt"
    bad.write_text("eu_alpha\n\nEu-Beta\n")
    cases = [
        (
            ["--tenant-file", str(listed)],
            f"error: 7 names in --tenant-file {listed} are not registered tenants: 'ghost_0', "
            "'ghost_1', 'ghost_2', 'ghost_3', 'ghost_4' and 2 more; nothing was run "
            "(see 'mtm tenants')",
        ),
        (
            ["--tenant-file", str(one), "--match", "eu_*"],
            f"error: no tenant 'ghost' is registered (--tenant-file {one}); nothing was run",
        ),
        (
            ["--tenant", "nobody", "--match", "*"],
            "error: no tenant 'nobody' is registered (--tenant); nothing was run",
        ),
        (
            ["--tenant-file", str(bad)],
            f"error: --tenant-file {bad}, line 3: schema name 'Eu-Beta' is not a plain "
            "lower-case identifier (use a-z, 0-9 and _, starting with a letter or _)",
        ),
        (
            ["--tenant-file", str(tmp_path / "missing.txt")],
            f"error: cannot read --tenant-file {tmp_path / 'missing.txt'}: "
            "No such file or directory",
        ),
    ]
    for args, message in cases:
        r = project.cli("migrate", *args)
        assert r.exit_code == 2, (args, r.output)
        assert r.output.strip() == message, args
    assert project.scalar("SELECT to_regclass('public.p')") is None
    assert all(names == ["0001_t1"] for names in _applied(project).values())


# --- canaries ----------------------------------------------------------------------------


def test_canary_count_and_percentage_rounding(project: Project) -> None:
    _fleet(project)
    # us_eps is already at head: it has no pending work and is never a canary
    assert project.cli("migrate", "--tenant", "us_eps").exit_code == 0
    pending = _md5_order(project, [t for t in TENANTS if t != "us_eps"])
    assert len(pending) == 6

    def canaries(value: str, *more: str) -> list[str]:
        r = project.cli("migrate", "--dry-run", "--json", "--canary", value, *more)
        assert r.exit_code == 0, r.output
        data = json.loads(r.output)
        rollout = data["rollout"]
        assert sorted(rollout["canaries"] + rollout["rest"]) == sorted(data["plan"]["tenants"])
        assert rollout["canaries_ok"] is None and rollout["rest_started"] is False
        return list(rollout["canaries"])

    assert canaries("2") == pending[:2]
    assert canaries("1%") == pending[:1]  # 0.06 tenants: rounded up, at least 1
    assert canaries("17%") == pending[:2]  # 1.02 -> 2
    assert canaries("50%") == pending[:3]  # exactly 3
    assert canaries("50.5%") == pending[:4]  # 3.03 -> 4
    assert canaries("100%") == pending
    assert canaries("40") == pending  # more than there are: all of them
    # among the selected tenants only
    assert canaries("2", "--match", "us_*") == _md5_order(project, ["us_delta", "us_zeta"])
    eu = _md5_order(project, ["eu_alpha", "eu_beta", "eu_gamma"])
    assert canaries("1", "--match", "eu_*") == eu[:1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--canary", "0"], "error: --canary must be at least 1 tenant"),
        (
            ["--canary", "-2"],
            "error: --canary takes a count of tenants (e.g. 5) or a percentage (e.g. 10%), "
            "not '-2'",
        ),
        (
            ["--canary", "ten"],
            "error: --canary takes a count of tenants (e.g. 5) or a percentage (e.g. 10%), "
            "not 'ten'",
        ),
        (["--canary", "0%"], "error: --canary 0%: a percentage must be above 0% and at most 100%"),
        (
            ["--canary", "150%"],
            "error: --canary 150%: a percentage must be above 0% and at most 100%",
        ),
        (["--then-all"], "error: --then-all goes with --canary N or --canary P%"),
        (
            ["--canary", "1", "--to", "public:0001_p"],
            "error: --canary stages the tenants, and --to public:0001_p migrates none; "
            "run --to public:NAME on its own",
        ),
    ],
)
def test_canary_refusals(project: Project, args: list[str], message: str) -> None:
    _fleet(project, TENANTS[:2])
    project.write("public", "0001_p.sql", "CREATE TABLE p (id int);")
    r = project.cli("migrate", *args)
    assert r.exit_code == 2, r.output
    assert r.output.strip() == message
    assert project.scalar("SELECT to_regclass('public.p')") is None
    assert all(names == ["0001_t1"] for names in _applied(project).values())


def test_canaries_are_reported_by_md5_and_the_run_stops_there(project: Project) -> None:
    _fleet(project)
    order = _md5_order(project)
    line = (
        f"canaries (3 of 7 tenants with pending work, first by md5(schema)): {', '.join(order[:3])}"
    )
    for _ in range(2):  # the same canaries every time
        r = project.cli("migrate", "--canary", "3", "--dry-run")
        assert r.exit_code == 0, r.output
        assert r.output.splitlines()[0] == line
        assert "dry run: the other 4 tenants with pending work would not be started" in r.output
    r = project.cli("migrate", "--canary", "3")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == line
    assert (
        "stopped after the canaries: the other 4 tenants with pending work were not started; "
        "run 'mtm migrate' (or add --then-all) to go on"
    ) in r.output
    applied = _applied(project)
    assert sorted(s for s, names in applied.items() if names == ["0001_t1", "0002_t2"]) == sorted(
        order[:3]
    )
    assert all(applied[s] == ["0001_t1"] for s in order[3:])
    # the next canary run takes the next ones: those at head have nothing pending
    r = project.cli("migrate", "--canary", "1", "--json")
    assert r.exit_code == 0, r.output
    rollout = json.loads(r.output)["rollout"]
    assert rollout["canaries"] == order[3:4] and rollout["rest"] == sorted(order[4:])
    assert rollout["canaries_ok"] is True and rollout["rest_started"] is False


def _fails_in(project: Project, schema: str) -> None:
    """0002 fails in one schema only (its search_path is that schema)."""
    project.write(
        "tenant",
        "0002_t2.sql",
        f"""
        CREATE TABLE t2 (id int);
        DO $$ BEGIN
          IF current_schema() = '{schema}' THEN RAISE EXCEPTION 'broken in %', current_schema();
          END IF;
        END $$;
        """,
    )


@pytest.mark.parametrize("then_all", [True, False])
def test_a_failing_canary_stops_the_rollout(project: Project, then_all: bool) -> None:
    _fleet(project)
    order = _md5_order(project)
    _fails_in(project, order[1])  # the second canary
    project.write("public", "0001_p.sql", "CREATE TABLE p (id int);")
    args = ["migrate", "--canary", "3", "--continue-on-error", "--jobs", "2"]
    r = project.cli(*args, *(["--then-all"] if then_all else []))
    assert r.exit_code == 1, r.output
    assert f"FAILED {order[1]}: migration 0002_t2: " in r.output
    assert "broken in " + order[1] in r.output
    assert "a canary failed: the other 4 tenants with pending work were not started" in r.output
    assert "every canary succeeded" not in r.output
    applied = _applied(project)
    assert applied[order[0]] == applied[order[2]] == ["0001_t1", "0002_t2"]
    assert applied[order[1]] == ["0001_t1"]  # rolled back: at a clean step
    assert all(applied[s] == ["0001_t1"] for s in order[3:])  # the rest untouched
    assert all(project.scalar(f"SELECT to_regclass('{s}.t2')") is None for s in order[3:])
    assert project.scalar("SELECT to_regclass('public.p')") is not None  # public ran first


def test_then_all_goes_on_when_every_canary_succeeded(project: Project) -> None:
    _fleet(project)
    project.write("public", "0001_p.sql", "CREATE TABLE p (id int);")
    order = _md5_order(project)
    r = project.cli("migrate", "--canary", "2", "--then-all", "--jobs", "3")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].endswith(f"first by md5(schema)): {order[0]}, {order[1]}")
    assert "every canary succeeded: migrating the other 5 tenants" in lines
    assert all(names == ["0001_t1", "0002_t2"] for names in _applied(project).values())
    assert project.query("SELECT name FROM public.mtm_migrations") == [("0001_p",)]
    # JSON: canaries and rest in the result
    project.write("tenant", "0003_t3.sql", "CREATE TABLE t3 (id int);")
    r = project.cli("migrate", "--canary", "1", "--then-all", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["ok"] is True and data["steps"] == 7 and data["tenants_migrated"] == 7
    assert data["rollout"] == {
        "canaries": order[:1],
        "rest": sorted(order[1:]),
        "then_all": True,
        "canaries_ok": True,
        "rest_started": True,
    }


def test_canaries_with_to_and_from_python(project: Project) -> None:
    _fleet(project)
    project.write("tenant", "0003_t3.sql", "CREATE TABLE t3 (id int);")
    order = _md5_order(project)
    seen: list[tuple[list[str], bool]] = []

    def announce(staged: Rollout) -> None:
        seen.append((list(staged.canaries), staged.rest_started))

    result = mtm.migrate(
        project.config,
        match="eu_*",
        canary="34%",
        then_all=True,
        to="tenant:0002_t2",
        announce=announce,
    )
    eu = [s for s in order if s.startswith("eu_")]
    assert result.ok and result.rollout is not None
    assert result.rollout.canaries == eu[:2] and result.rollout.rest == sorted(eu[2:])
    assert seen == [(eu[:2], False), (eu[:2], True)]
    applied = _applied(project)
    assert all(applied[s] == ["0001_t1", "0002_t2"] for s in eu)  # --to: and no further
    assert all(applied[s] == ["0001_t1"] for s in order if s not in eu)


# --- status ------------------------------------------------------------------------------


def test_status_shows_the_tenants_ahead_of_the_rest(project: Project) -> None:
    _fleet(project)
    order = _md5_order(project)
    r = project.cli("status")
    assert "ahead" not in r.output  # all at one step: nobody is ahead
    assert project.cli("migrate", "--canary", "2").exit_code == 0
    r = project.cli("status")
    assert r.exit_code == 0, r.output
    assert "2 tenants ahead at tenant:0002_t2; 5 at tenant:0001_t1" in r.output
    marked = {ln.split()[1] for ln in r.output.splitlines() if "(ahead)" in ln}
    assert marked == set(order[:2])
    data = json.loads(project.cli("status", "--json").output)
    assert data["ahead"] == {
        "tenants": sorted(order[:2]),
        "positions": [{"last_applied": "0002_t2", "tenants": 2}],
        "rest": {"last_applied": "0001_t1", "tenants": 5},
    }
    assert {t["schema"] for t in data["tenants"] if t["ahead"]} == set(order[:2])
    # a third step for one canary: two positions ahead of the rest
    project.write("tenant", "0003_t3.sql", "CREATE TABLE t3 (id int);")
    assert project.cli("migrate", "--tenant", order[0]).exit_code == 0
    r = project.cli("status")
    assert "1 tenant ahead at tenant:0003_t3, 1 at tenant:0002_t2; 5 at tenant:0001_t1" in r.output
    assert project.cli("migrate").exit_code == 0
    r = project.cli("status")
    assert "ahead" not in r.output
    assert json.loads(project.cli("status", "--json").output)["ahead"] is None


def test_rollout_logs_its_stages(project: Project, caplog: pytest.LogCaptureFixture) -> None:
    _fleet(project, TENANTS[:4])
    order = _md5_order(project)
    _fails_in(project, order[0])
    with caplog.at_level(logging.INFO, logger="mtm.run"):
        result = mtm.migrate(project.config, canary=1, then_all=True)
    assert not result.ok and result.rollout is not None
    assert result.rollout.canaries_ok is False and not result.rollout.rest_started
    events = [(r.levelname, r.event) for r in caplog.records if hasattr(r, "event")]
    assert ("INFO", "rollout.canaries") in events
    assert ("WARNING", "rollout.held") in events and ("INFO", "rollout.rest") not in events
    held = next(r for r in caplog.records if getattr(r, "event", None) == "rollout.held")
    assert (held.rest, held.reason) == (3, "a canary failed")  # type: ignore[attr-defined]
    assert project.scalar(f"SELECT to_regclass('{order[0]}.t2')") is None  # rolled back
    caplog.clear()
    _fails_in(project, "nobody")  # fixed: nothing had applied it
    with caplog.at_level(logging.INFO, logger="mtm.run"):
        result = mtm.migrate(project.config, canary=1, then_all=True)
    assert result.ok and result.rollout is not None and result.rollout.rest_started
    rest = next(r for r in caplog.records if getattr(r, "event", None) == "rollout.rest")
    assert rest.rest == 3  # type: ignore[attr-defined]
    assert all(names == ["0001_t1", "0002_t2"] for names in _applied(project).values())


def test_a_failing_public_step_starts_no_canary(project: Project) -> None:
    _fleet(project, TENANTS[:3])
    project.write("public", "0001_p.sql", "SELECT 1/0;")
    r = project.cli("migrate", "--canary", "1", "--then-all")
    assert r.exit_code == 1, r.output
    assert "FAILED *PUBLIC: migration 0001_p: division by zero" in r.output
    assert "public failed, so no canary started: the other 2 tenants with pending work " in (
        r.output
    )
    assert all(names == ["0001_t1"] for names in _applied(project).values())


@pytest.mark.slow
def test_ctrl_c_during_the_canaries_starts_none_of_the_rest(
    project: Project, tmp_path: Path
) -> None:
    """A real run held inside its canary's step: the run lock is held (no other migrate
    can start between the stages), Ctrl-C lets the canary finish and starts no other
    tenant, even with --then-all."""
    _fleet(project, TENANTS[:4])
    canary = _md5_order(project)[0]
    project.write(
        "tenant",
        "0002_t2.sql",
        f"SELECT pg_advisory_xact_lock({GATE}) WHERE current_schema() = '{canary}';\n"
        "CREATE TABLE t2 (id int);",
    )
    taken = tmp_path / "ctrl-c-taken"
    with gate(project) as g:
        run = spawn(
            project,
            "migrate",
            "--canary",
            "1",
            "--then-all",
            "--lock-timeout",
            "60s",
            ctrl_c_marker=taken,
        )
        try:
            wait_until(lambda: waiting_on_gate(project, GATE) == 1, message="the canary's step")
            second = project.run("migrate")
            assert second.returncode == 2 and "holds the migration lock" in second.stderr
            run.send_signal(signal.SIGINT)
            wait_until(taken.exists, message="the run to take the Ctrl-C")
            g.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
            out, err = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
    assert run.returncode == 130, out + err
    assert "Traceback" not in err
    assert "interrupted during the canaries: the other 3 tenants with pending work" in out
    applied = _applied(project)
    assert applied.pop(canary) == ["0001_t1", "0002_t2"]  # the running step finished
    assert all(names == ["0001_t1"] for names in applied.values())


# --- pure parts --------------------------------------------------------------------------


def _at(schema: str, last: str | None, problems: list[str] | None = None) -> SchemaStatus:
    applied = 0 if last is None else int(last[:4])
    return SchemaStatus(schema, "tenant", None, (), applied, 3, last, [], problems or [])


def _one(*statuses: SchemaStatus) -> list[tuple[SchemaStatus, int]]:
    return [(s, 1) for s in statuses]


def test_ahead_is_relative_to_where_most_tenants_are() -> None:
    assert ahead([]) is None
    assert ahead(_one(_at("a", "0001_x"), _at("b", "0001_x"))) is None  # all at one step
    # most are ahead of a few: those few are behind, nobody is "ahead"
    assert ahead(_one(_at("a", "0002_y"), _at("b", "0002_y"), _at("c", "0001_x"))) is None
    found = ahead(_one(_at("a", "0002_y"), _at("b", None), _at("c", None), _at("d", "0003_z")))
    assert found is not None
    assert (found.bulk, found.bulk_count) == (None, 2)  # nothing applied is a position too
    assert found.positions == (("0002_y", 1), ("0003_z", 1)) and found.schemas == {"a", "d"}
    assert ahead_line(found) == (
        "1 tenant ahead at tenant:0003_z, 1 at tenant:0002_y; 2 at no tenant migration"
    )
    # a tie: the older position is the rest's
    tie = ahead(_one(_at("a", "0002_y"), _at("b", "0001_x")))
    assert tie is not None and tie.bulk == "0001_x" and tie.schemas == {"a"}
    # a tenant whose ledger disagrees with the files is neither the rest nor ahead
    drift = ahead(_one(_at("a", "0001_x"), _at("b", "0003_z", ["b: edited"]), _at("c", "0001_x")))
    assert drift is None


def test_ahead_counts_summarised_positions() -> None:
    """A summarised fleet: positions with counts, no schema names to mark."""
    found = ahead([(_at("", "0002_y"), 997), (_at("", "0003_z"), 3), (_at("x", None), 1)])
    assert found is not None
    assert (found.bulk, found.bulk_count, found.positions) == ("0002_y", 997, (("0003_z", 3),))
    assert found.schemas == frozenset()
    assert ahead_line(found) == "3 tenants ahead at tenant:0003_z; 997 at tenant:0002_y"


def test_canary_counts() -> None:
    def of(value: int | str, pending: int) -> int:
        canary = parse_canary(value)
        assert canary is not None
        return canary.of(pending)

    values = (1, "1", " 3 ", "1%", "0.1%", "99.5%", "100%")
    assert [of(v, 200) for v in values] == [1, 1, 3, 2, 1, 199, 200]
    assert of("10%", 0) == 0 and of(5, 3) == 3
    assert parse_canary(None) is None
    for wrong in (True, "1.5", "%", "x%", "nan%", "inf%", "-5%", "1e3"):
        with pytest.raises(UsageError):
            parse_canary(wrong)
    assert md5_order(["b", "a", "c"]) == sorted(
        ["a", "b", "c"], key=lambda s: hashlib.md5(s.encode()).hexdigest()
    )
