"""``mtm lint``: every bad migration flagged with its rule, no good one flagged.

The migrations run in order in one namespace, so what an earlier one declares (a
column's type, a NOT VALID check) informs the rules on a later one.
"""

from __future__ import annotations

import json

import pytest

from conftest import Project
from mtm import commands, lintrules, sqlscript
from mtm.errors import ConfigError

BASE = """
CREATE TABLE t (id int PRIMARY KEY, v varchar(10), n numeric(10, 2), c text, ref int,
                b varbit(4), tags varchar(5)[]);
CREATE INDEX t_v ON t (v);
ALTER TABLE t ALTER COLUMN v SET NOT NULL;
ALTER TABLE t ADD CONSTRAINT t_self FOREIGN KEY (ref) REFERENCES t (id);
ALTER TABLE t ADD COLUMN made uuid DEFAULT gen_random_uuid();
ALTER TABLE t ADD CONSTRAINT t_v_key UNIQUE (v);
"""

# name -> (content, the rules it must break: empty for a good migration)
MIGRATIONS: dict[str, tuple[str, set[str]]] = {
    "0001_base.sql": (BASE, set()),
    "0002_concurrent.sql": (
        "-- mtm:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS t_c ON t (c);",
        set(),
    ),
    "0003_widen.sql": (
        "ALTER TABLE t ALTER COLUMN v TYPE varchar(20), ALTER COLUMN n TYPE numeric(12, 2);\n"
        "ALTER TABLE t ALTER COLUMN c TYPE varchar;\nALTER TABLE t ALTER b TYPE varbit;\n"
        "ALTER TABLE t ALTER tags TYPE varchar(9)[];\nALTER TABLE t ALTER v TYPE text;",
        set(),
    ),
    "0004_defaults.sql": (
        "ALTER TABLE t ADD COLUMN at timestamptz DEFAULT now(), ADD COLUMN k int DEFAULT 0;",
        set(),
    ),
    "0005_check.sql": (
        "ALTER TABLE t ADD CONSTRAINT t_ref_nn CHECK (ref IS NOT NULL) NOT VALID;",
        set(),
    ),
    "0006_not_null.sql": (
        "ALTER TABLE t VALIDATE CONSTRAINT t_ref_nn;\nALTER TABLE t ALTER ref SET NOT NULL;",
        set(),
    ),
    "0007_fk.sql": (
        "ALTER TABLE t ADD CONSTRAINT t_plan FOREIGN KEY (k) REFERENCES public.plans (id) "
        "NOT VALID;",
        set(),
    ),
    "0008_savepoint.sql": (
        "SAVEPOINT a;\nUPDATE t SET k = 1;\nRELEASE SAVEPOINT a;",
        set(),
    ),
    "0009_python_good.py": (
        "import sqlalchemy as sa\n\ndef up(op):\n"
        "    op.create_table('u', sa.Column('id', sa.Integer, primary_key=True),\n"
        "                    sa.Column('t_id', sa.Integer))\n"
        "    op.create_index('u_t', 'u', ['t_id'])\n"
        "    op.create_foreign_key('u_t_fk', 'u', 't', ['t_id'], ['id'])\n"
        "    op.add_column('t', sa.Column('flag', sa.Boolean, server_default='false'))\n",
        set(),
    ),
    "0010_index.sql": ("-- adds an index\nCREATE INDEX t_k ON t (k);", {"index-not-concurrent"}),
    "0010_unique.sql": (
        "ALTER TABLE t ADD CONSTRAINT t_k_key UNIQUE (k);",
        {"index-not-concurrent"},
    ),
    "0010_using_index.sql": (
        "-- mtm:no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_k_u ON t (k);\n"
        "ALTER TABLE t ADD CONSTRAINT t_k_u UNIQUE USING INDEX t_k_u;",
        set(),
    ),
    "0011_type.sql": ("ALTER TABLE t ALTER COLUMN n TYPE int;", {"column-type-rewrite"}),
    "0012_using.sql": (
        "ALTER TABLE t ALTER COLUMN c TYPE varchar USING c || '';",
        {"column-type-rewrite"},
    ),
    "0013_unknown_type.sql": (
        "ALTER TABLE t ALTER COLUMN nope TYPE text;",
        {"column-type-rewrite"},
    ),
    "0014_volatile.sql": (
        "ALTER TABLE t ADD COLUMN u uuid DEFAULT gen_random_uuid();",
        {"volatile-default"},
    ),
    "0015_serial.sql": ("ALTER TABLE t ADD COLUMN s bigserial;", {"volatile-default"}),
    "0016_not_null.sql": ("ALTER TABLE t ALTER c SET NOT NULL;", {"not-null-without-check"}),
    "0017_fk.sql": (
        "ALTER TABLE t ADD CONSTRAINT t_c_fk FOREIGN KEY (ref) REFERENCES t (id);",
        {"foreign-key-validated"},
    ),
    "0018_tx.sql": (
        "-- mtm:no-transaction\nBEGIN;\nUPDATE t SET k = 2;\nCOMMIT;",
        {"transaction-control"},
    ),
    "0019_python_index.py": (
        "def up(op):\n    op.create_index('t_flag', 't', ['flag'])\n",
        {"index-not-concurrent"},
    ),
    "0020_python_commit.py": (
        "def up(op):\n    op.execute('UPDATE t SET k = 3')\n    op.execute('COMMIT')\n",
        {"transaction-control"},
    ),
    "0021_python_reads.py": (
        "import sqlalchemy as sa\n\ndef up(op):\n"
        "    for row in op.get_bind().execute(sa.text('SELECT id FROM t')):\n"
        "        op.execute(f'UPDATE t SET k = {row[0]}')\n",
        {"not-rendered"},
    ),
    "0022_silenced.sql": (
        "-- mtm-lint: disable=index-not-concurrent, volatile-default\n"
        "CREATE INDEX t_at ON t (at);\nALTER TABLE t ADD COLUMN r float DEFAULT random();",
        set(),
    ),
    "0023_silenced.py": (
        "# mtm-lint: disable=index-not-concurrent\n"
        "def up(op):\n    op.create_index('t_ref', 't', ['ref'])\n",
        set(),
    ),
    "0024_half_silenced.sql": (
        "-- mtm-lint: disable=index-not-concurrent\n"
        "CREATE INDEX t_r ON t (r);\nALTER TABLE t ADD COLUMN r2 float DEFAULT random();",
        {"volatile-default"},
    ),
}


def write_all(project: Project) -> None:
    project.write("public", "0001_plans.sql", "CREATE TABLE plans (id int PRIMARY KEY);")
    for name, (content, _) in MIGRATIONS.items():
        project.write("tenant", name, content)


def test_each_bad_migration_is_flagged_with_its_rule_and_no_good_one(project: Project) -> None:
    write_all(project)
    out = project.run("lint", "--json")
    assert out.returncode == 1, out.stderr
    data = json.loads(out.stdout)
    assert data["ok"] is False
    assert data["checked"] == len(MIGRATIONS) + 1
    found: dict[str, set[str]] = {}
    for f in data["findings"]:
        found.setdefault(f["migration"], set()).add(f["rule"])
        assert f["explanation"] == lintrules.RULES[f["rule"]].explanation
        assert f["alternative"]
    expected = {name.rsplit(".", 1)[0]: rules for name, (_, rules) in MIGRATIONS.items() if rules}
    assert found == expected


def test_text_output_names_file_line_rule_and_alternative(project: Project) -> None:
    write_all(project)
    out = project.cli("lint", "0010_index", "0016_not_null", "tenant:0019_python_index")
    assert out.exit_code == 1
    lines = out.output.splitlines()
    assert lines[0] == (
        "migrations/tenant/0010_index.sql:2: index-not-concurrent [CREATE INDEX t_k ON t (k)]"
    )
    assert lines[1].strip().startswith("CREATE INDEX on an existing table blocks every write")
    assert "instead: CREATE INDEX CONCURRENTLY" in lines[1]
    assert lines[2].startswith("migrations/tenant/0016_not_null.sql:1: not-null-without-check")
    # Rendered Python has no line of its own.
    assert lines[4].startswith("migrations/tenant/0019_python_index.py: index-not-concurrent")
    assert lines[-1] == "3 findings in 3 migrations checked"


def test_clean_migrations_exit_zero(project: Project) -> None:
    write_all(project)
    good = [n.rsplit(".", 1)[0] for n, (_, rules) in MIGRATIONS.items() if not rules]
    out = project.cli("lint", *good)
    assert out.exit_code == 0, out.output
    assert out.output == f"0 findings in {len(good)} migrations checked\n"


def test_lint_pending_only(project: Project) -> None:
    project.write("tenant", "0001_base.sql", BASE)
    assert project.cli("migrate").exit_code == 0
    assert project.cli("create", "acme").exit_code == 0
    project.write("tenant", "0002_index.sql", "CREATE INDEX t_c ON t (c);")
    project.write("tenant", "0003_ok.sql", "ALTER TABLE t ADD COLUMN z int;")
    out = project.cli("lint", "--pending", "--json")
    data = json.loads(out.output)
    assert data["checked"] == 2
    assert [f["migration"] for f in data["findings"]] == ["0002_index"]
    assert out.exit_code == 1


@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        ({}, ("nope",), "there is no migration 'nope'"),
        ({}, ("tenant:nope",), "there is no tenant migration 'nope'"),
        ({"public": "0001_x.sql"}, ("0001_x",), "'0001_x' is both a public and a tenant"),
        ({}, ("0001_x", "--pending"), "give migration names or --pending, not both"),
        ({"bad": "-- mtm-lint: disable=index-concurrently"}, (), "names no rule"),
    ],
)
def test_lint_bad_usage(
    project: Project, files: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    project.write("tenant", "0001_x.sql", "CREATE TABLE x (id int);\n" + files.get("bad", ""))
    if "public" in files:
        project.write("public", files["public"], "SELECT 1;")
    out = project.run("lint", *args)
    assert out.returncode == 2, out.stdout
    assert message in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_rules_are_listed(project: Project) -> None:
    out = project.cli("lint", "--rules")
    assert out.exit_code == 0
    lines = out.output.splitlines()
    assert [line.split(":")[0].split(" ")[0] for line in lines] == list(lintrules.RULES)
    assert [line.split(":")[0] for line in lines if line.startswith("citus-")] == [
        f"{rule} (tenant migrations on a Citus cluster)"
        for rule in lintrules.RULES
        if rule.startswith("citus-")
    ]


MODELS = """
import sqlalchemy as sa

metadata = sa.MetaData()
sa.Table("t", metadata, sa.Column("id", sa.Integer), sa.Column("c", sa.Text))
sa.Table("plans", metadata, sa.Column("id", sa.Integer), sa.Column("tier", sa.Text),
         schema="public")
"""


def test_drop_of_a_column_the_models_still_have(project: Project) -> None:
    (project.root / "review_models.py").write_text(MODELS, encoding="utf-8")
    project.write("public", "0001_plans.sql", "CREATE TABLE plans (id int, tier text, old int);")
    project.write("public", "0002_drop.sql", "ALTER TABLE plans DROP COLUMN tier, DROP old;")
    project.write("tenant", "0001_t.sql", "CREATE TABLE t (id int, c text, gone text);")
    project.write("tenant", "0002_drop.sql", "ALTER TABLE t DROP COLUMN c, DROP COLUMN gone;")
    project.write("tenant", "0003_public.sql", "ALTER TABLE public.plans DROP COLUMN tier;")
    result = commands.lint(project.config, models="review_models:metadata")
    found = {(f.namespace, f.migration, f.detail) for f in result.findings}
    assert found == {
        ("public", "0002_drop", "plans.tier"),
        ("tenant", "0002_drop", "t.c"),
        ("tenant", "0003_public", "plans.tier"),
    }
    assert {f.rule for f in result.findings} == {"drop-column-referenced"}
    # Without models the rule cannot know, and says nothing.
    assert commands.lint(project.config).findings == []
    with pytest.raises(ConfigError, match="cannot import nowhere"):
        commands.lint(project.config, models="nowhere:metadata")


def subjects(*scripts: str) -> list[lintrules.Subject]:
    return [
        lintrules.Subject("tenant", f"{i:04}", f"{i:04}.sql", sqlscript.split(sql))
        for i, sql in enumerate(scripts)
    ]


@pytest.mark.parametrize(
    ("old", "new", "rewrites"),
    [
        ("varchar(10)", "varchar(20)", False),
        ("varchar(10)", "varchar(5)", True),
        ("varchar(10)", "text", False),
        ("text", "varchar", False),
        ("text", "varchar(10)", True),
        ("numeric(10,2)", "numeric(12,2)", False),
        ("numeric(10,2)", "numeric(12,3)", True),
        ("numeric(10,2)", "numeric", False),
        ("numeric", "numeric(10,2)", True),
        ("int", "bigint", True),
        ("int", "int", False),
        ("timestamp", "timestamptz", True),
        ("varchar(3)[]", "varchar(4)[]", False),
        ("varchar(3)", "varchar(4)[]", True),
    ],
)
def test_type_changes(old: str, new: str, rewrites: bool) -> None:
    found = lintrules.lint(
        subjects(f"CREATE TABLE t (x {old});", f"ALTER TABLE t ALTER x TYPE {new};")
    )
    assert [f.rule for f in found] == (["column-type-rewrite"] if rewrites else [])


def test_earlier_statements_inform_later_ones() -> None:
    # A check added in the same migration before SET NOT NULL counts; after it, not.
    check = "ALTER TABLE t ADD CONSTRAINT k CHECK ({} IS NOT NULL){};"
    set_not_null = "ALTER TABLE t ALTER c SET NOT NULL;"
    assert lintrules.lint(subjects(check.format("c", " NOT VALID") + set_not_null)) == []
    late = set_not_null + check.format("c", " NOT VALID")
    assert [f.rule for f in lintrules.lint(subjects(late))] == ["not-null-without-check"]
    # A check validated as it is added is not the NOT VALID step; another column's
    # check does not count.
    for first in (check.format("c", ""), check.format("d", " NOT VALID")):
        found = lintrules.lint(subjects(first + set_not_null))
        assert [f.rule for f in found] == ["not-null-without-check"]
    # The same table name in another schema is another table.
    across = "CREATE TABLE t (id int); CREATE INDEX i ON public.t (id);"
    assert [f.rule for f in lintrules.lint(subjects(across))] == ["index-not-concurrent"]
    # Only the selected migrations are reported, but earlier ones still inform them.
    both = subjects("CREATE TABLE t (x varchar(3));", "ALTER TABLE t ALTER x TYPE varchar(9);")
    assert lintrules.lint(both, {("tenant", "0001")}) == []


def test_python_api_lint_and_sql(project: Project) -> None:
    import mtm

    write_all(project)
    result = mtm.lint(project.config, names=["0015_serial", "0004_defaults"])
    assert not result.ok and result.checked == 2
    (finding,) = result.findings
    assert (finding.rule, finding.migration, finding.line) == ("volatile-default", "0015_serial", 1)
    assert finding.detail == "s bigserial"
    assert finding.path == str(project.migrations / "tenant" / "0015_serial.sql")
    (section,) = mtm.sql(project.config, tenant="acme", name="0015_serial")
    assert section.schemas == ("acme",)
    assert section.rendered[0].body == "ALTER TABLE t ADD COLUMN s bigserial;"


def test_a_reason_after_the_silenced_rules_is_not_read_as_a_rule(project: Project) -> None:
    project.write("tenant", "0001_t.sql", "CREATE TABLE t (id int);")
    project.write(
        "tenant",
        "0002_i.sql",
        "-- mtm-lint: disable=index-not-concurrent because t stays small\n"
        "CREATE INDEX t_id ON t (id);",
    )
    assert project.cli("lint").exit_code == 0


def test_rendered_python_that_does_not_parse_is_reported_not_crashed_on(project: Project) -> None:
    project.write(
        "tenant", "0001_bad.py", "def up(op):\n    op.execute('CREAT TABLE x (id int)')\n"
    )
    out = project.run("lint", "--json")
    assert out.returncode == 1, out.stderr
    (finding,) = json.loads(out.stdout)["findings"]
    assert finding["rule"] == "not-rendered"
    assert finding["detail"].startswith("its rendered SQL does not parse: line 1: syntax error")


# Statements Citus refuses (or turns into something else) in a distributed schema, each
# with its rule; tests/test_citus_lint.py runs every one on a cluster to keep them true.
CITUS_BAD = {
    "CREATE TRIGGER t_touch BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION touch();": (
        "citus-trigger"
    ),
    "ALTER TABLE t ALTER CONSTRAINT t_ref_fk DEFERRABLE;": "citus-alter-constraint",
    "UPDATE t SET token = gen_random_uuid()::text;": "citus-volatile-modify",
    "UPDATE t SET note = 'x' WHERE random() < 0.5;": "citus-volatile-modify",
    "DELETE FROM t WHERE id < random() * 10;": "citus-volatile-modify",
    "ALTER TABLE t SET SCHEMA public;": "citus-set-schema",
}
# And what they would write instead, which passes.
CITUS_GOOD = [
    "UPDATE t SET note = 'x', at = now() WHERE id = 1;",
    "UPDATE t SET token = (SELECT gen_random_uuid()::text), at = (SELECT clock_timestamp());",
    "DELETE FROM t WHERE at < now() - interval '1 day';",
    "ALTER TABLE t DROP CONSTRAINT t_ref_fk;",
    "ALTER TABLE t ADD CONSTRAINT t_ref_fk FOREIGN KEY (ref) REFERENCES t (id) "
    "DEFERRABLE NOT VALID;",
]


def _citus_subjects(namespace: str) -> list[lintrules.Subject]:
    sql = "\n".join([*CITUS_BAD, *CITUS_GOOD])
    return [lintrules.Subject(namespace, "0001_x", "0001_x.sql", sqlscript.split(sql))]


def test_the_citus_rules_flag_what_citus_refuses_in_tenant_migrations_only() -> None:
    findings = lintrules.lint(_citus_subjects("tenant"), citus=True)
    assert [(f.line, f.rule) for f in findings] == [
        (line, rule) for line, rule in enumerate(CITUS_BAD.values(), start=1)
    ]
    assert [f.detail for f in findings if f.rule == "citus-volatile-modify"] == [
        "gen_random_uuid()",
        "random()",
        "random()",
    ]
    assert lintrules.lint(_citus_subjects("tenant")) == []  # not on a cluster
    assert lintrules.lint(_citus_subjects("public"), citus=True) == []  # public stays local


def test_the_citus_rules_run_when_the_config_says_distributed_or_with_citus(
    project: Project,
) -> None:
    project.write("tenant", "0001_t.sql", "CREATE TABLE t (id int PRIMARY KEY, note text);")
    project.write("tenant", "0002_fill.sql", "UPDATE t SET note = random()::text;")
    plain = project.cli("lint")
    assert plain.exit_code == 0, plain.output
    flagged = project.cli("lint", "--citus")
    assert flagged.exit_code == 1
    assert flagged.output.splitlines()[0] == (
        "migrations/tenant/0002_fill.sql:1: citus-volatile-modify "
        "[UPDATE t SET note = random()::text]"
    )
    assert "random()" in flagged.output and "instead: compute the value" in flagged.output
    distributed = project.run("lint", "--json", env={"MTM_DISTRIBUTED": "true"})
    assert distributed.returncode == 1, distributed.stderr
    assert [f["rule"] for f in json.loads(distributed.stdout)["findings"]] == [
        "citus-volatile-modify"
    ]
    assert project.run("lint", "--no-citus", env={"MTM_DISTRIBUTED": "true"}).returncode == 0
    silenced = "-- mtm-lint: disable=citus-volatile-modify\nUPDATE t SET note = random()::text;"
    project.write("tenant", "0002_fill.sql", silenced)
    assert project.cli("lint", "--citus").exit_code == 0
