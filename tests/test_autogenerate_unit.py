"""The pure parts of autogenerate: the models key, the split by namespace, the enum SQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from mtm import Config
from mtm.autogenhooks import EnumColumn, add_value_statements, model_enums, rebuild_statements
from mtm.errors import ConfigError, UsageError
from mtm.modelset import specs, split


def test_models_is_a_string_or_a_list_and_can_come_from_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "mtm.toml"
    file.write_text('models = "a.models:metadata"\n')
    assert specs(Config.load(file, env={})) == ["a.models:metadata"]
    file.write_text('models = ["a.models:metadata", "b.models:Base.metadata"]\n')
    config = Config.load(file, env={})
    assert specs(config) == ["a.models:metadata", "b.models:Base.metadata"]
    hash(config)  # a list in the file is kept as a tuple: the config stays hashable
    env = {"MTM_MODELS": "c:metadata, d:metadata"}
    assert specs(Config.load(file, env=env)) == ["c:metadata", "d:metadata"]
    file.write_text("models = [1, 2]\n")
    with pytest.raises(ConfigError, match="key 'models' must be a string"):
        Config.load(file, env={})
    file.write_text("")
    assert specs(Config.load(file, env={})) == []


def test_public_tables_may_not_refer_to_tenant_tables() -> None:
    metadata = sa.MetaData()
    sa.Table("users", metadata, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table(
        "plans",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner", sa.ForeignKey("users.id")),
        schema="public",
    )
    with pytest.raises(UsageError, match=r"public table plans has a foreign key to users\.id"):
        split(list(metadata.tables.values()))


def test_split_copies_and_sorts_by_namespace() -> None:
    metadata = sa.MetaData()
    plans = sa.Table(
        "plans", metadata, sa.Column("id", sa.Integer, primary_key=True), schema="public"
    )
    sa.Table("users", metadata, sa.Column("plan", sa.ForeignKey("public.plans.id")))
    models = split(list(metadata.tables.values()))
    assert [t.name for t in models.tables("public")] == ["plans"]
    assert [t.name for t in models.tables("tenant")] == ["users"]
    assert models.tables("public")[0] is not plans  # the application's objects stay its own


def test_new_values_go_where_the_models_put_them() -> None:
    assert add_value_statements("s", ["a", "c"], ["a", "b", "c", "d"]) == [
        "ALTER TYPE \"s\" ADD VALUE 'b' BEFORE 'c'",
        "ALTER TYPE \"s\" ADD VALUE 'd' AFTER 'c'",
    ]
    assert add_value_statements("s", ["b"], ["a", "b"]) == [
        "ALTER TYPE \"s\" ADD VALUE 'a' BEFORE 'b'"
    ]
    assert add_value_statements("s", [], ["x'y"]) == ["ALTER TYPE \"s\" ADD VALUE 'x''y'"]


def test_rebuilding_an_enum_moves_each_column_and_its_default() -> None:
    columns = [EnumColumn("t", "c", "'a'::s"), EnumColumn("u", "d", None)]
    assert rebuild_statements("s", ["a"], columns) == [
        'ALTER TYPE "s" RENAME TO "s_old"',
        "CREATE TYPE \"s\" AS ENUM ('a')",
        'ALTER TABLE "t" ALTER COLUMN "c" DROP DEFAULT',
        'ALTER TABLE "t" ALTER COLUMN "c" TYPE "s" USING "c"::text::"s"',
        'ALTER TABLE "t" ALTER COLUMN "c" SET DEFAULT \'a\'::s',
        'ALTER TABLE "u" ALTER COLUMN "d" TYPE "s" USING "d"::text::"s"',
        'DROP TYPE "s_old"',
    ]


def test_an_enum_belongs_to_the_namespace_that_creates_it() -> None:
    metadata = sa.MetaData()
    kind = sa.Enum("a", "b", name="kind")  # used by a public table: public
    shared = sa.Enum("x", name="shared", schema="public")  # public, used by a tenant table
    mood = sa.Enum("sad", "ok", name="mood")  # tenant
    sa.Table("plans", metadata, sa.Column("k", kind), schema="public")
    sa.Table("users", metadata, sa.Column("s", shared), sa.Column("m", mood))
    tables = list(metadata.sorted_tables)
    assert model_enums(tables, public=True) == {"kind": ["a", "b"], "shared": ["x"]}
    assert model_enums(tables, public=False) == {"mood": ["sad", "ok"]}
