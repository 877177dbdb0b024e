"""The test project's SQLAlchemy models for the autogenerate tests, as source text.

``MODELS_V1`` is the starting point: 15 tables, public and tenant, foreign keys both
ways, enums in both namespaces, plain, composite and expression indexes, named CHECK
and UNIQUE constraints, server defaults. ``MODELS_V2`` changes it in the six ways the
tests follow: a new table, a new column, a dropped index, a changed server default, a
changed CHECK and a new enum value. Each is written to a module of its own name (a
test imports both in one process).
"""

MODELS_V1 = """
import sqlalchemy as sa

metadata = sa.MetaData()

plan_kind = sa.Enum("free", "team", "enterprise", name="plan_kind")
user_status = sa.Enum("active", "suspended", name="user_status")
member_role = sa.Enum("owner", "member", name="member_role")
task_status = sa.Enum("todo", "doing", "done", name="task_status")

# --- public -----------------------------------------------------------------------------

sa.Table(
    "plans",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50), nullable=False),
    sa.Column("kind", plan_kind, nullable=False, server_default="free"),
    sa.Column("price", sa.Numeric(10, 2), nullable=False, server_default="0"),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()")),
    sa.UniqueConstraint("name", name="uq_plans_name"),
    sa.CheckConstraint("price >= 0", name="ck_plans_price"),
    schema="public",
)
sa.Table(
    "features",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("code", sa.String(40), nullable=False, unique=True),
    schema="public",
)
sa.Table(
    "plan_features",
    metadata,
    sa.Column("plan_id", sa.ForeignKey("public.plans.id"), primary_key=True),
    sa.Column("feature_id", sa.ForeignKey("public.features.id"), primary_key=True),
    schema="public",
)
sa.Table(
    "countries",
    metadata,
    sa.Column("code", sa.String(2), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    schema="public",
)

# --- tenant -----------------------------------------------------------------------------

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("status", user_status, nullable=False, server_default="active"),
    sa.Column("plan_id", sa.ForeignKey("public.plans.id"), nullable=True),
    sa.Column("country", sa.ForeignKey("public.countries.code")),
)
sa.Index("ix_users_lower_email", sa.func.lower(users.c.email), unique=True)
sa.Table(
    "teams",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(80), nullable=False),
)
sa.Table(
    "memberships",
    metadata,
    sa.Column("user_id", sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("team_id", sa.ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("role", member_role, nullable=False, server_default="member"),
)
sa.Table(
    "projects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("team_id", sa.ForeignKey("teams.id"), nullable=False, index=True),
    sa.Column("name", sa.String(120), nullable=False),
    sa.Column("budget", sa.Numeric(12, 2)),
    sa.Column("archived", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.CheckConstraint("budget >= 0", name="ck_projects_budget"),
)
tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("project_id", sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("assignee_id", sa.ForeignKey("users.id", ondelete="SET NULL")),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="3"),
    sa.Column("status", task_status, nullable=False, server_default="todo"),
    sa.CheckConstraint("priority BETWEEN 1 AND 5", name="ck_tasks_priority"),
)
sa.Index("ix_tasks_project_status", tasks.c.project_id, tasks.c.status)
sa.Table(
    "comments",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("task_id", sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    sa.Column("author_id", sa.ForeignKey("users.id"), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()")),
)
sa.Table(
    "tags",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(40), nullable=False),
    sa.UniqueConstraint("name", name="uq_tags_name"),
)
sa.Table(
    "task_tags",
    metadata,
    sa.Column("task_id", sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("tag_id", sa.ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True),
)
sa.Table(
    "invoices",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("plan_id", sa.ForeignKey("public.plans.id"), nullable=False),
    sa.Column("amount", sa.Numeric(12, 2), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False, server_default="EUR"),
    sa.Column("issued_on", sa.Date, nullable=False, server_default=sa.text("CURRENT_DATE")),
)
audit = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("payload", sa.dialects.postgresql.JSONB, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
)
sa.Index("ix_audit_log_kind", audit.c.payload["kind"].astext)
sa.Table(
    "settings",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text),
)
"""

# The six changes, applied to the text of MODELS_V1.
CHANGES = {
    "new table": (
        '\nsa.Table(\n    "settings",',
        '\nsa.Table(\n    "labels",\n    metadata,\n'
        '    sa.Column("id", sa.Integer, primary_key=True),\n'
        '    sa.Column("text", sa.Text, nullable=False),\n)\nsa.Table(\n    "settings",',
    ),
    "new column": (  # last: ADD COLUMN appends, and the catalogs compare positions
        '    sa.Column("country", sa.ForeignKey("public.countries.code")),\n',
        '    sa.Column("country", sa.ForeignKey("public.countries.code")),\n'
        '    sa.Column("nickname", sa.Text),\n',
    ),
    "dropped index": (
        'sa.Index("ix_tasks_project_status", tasks.c.project_id, tasks.c.status)\n',
        "",
    ),
    "changed server default": ('server_default="EUR"', 'server_default="USD"'),
    "changed check": ('"priority BETWEEN 1 AND 5"', '"priority BETWEEN 1 AND 10"'),
    "new enum value": (
        'task_status = sa.Enum("todo", "doing", "done"',
        'task_status = sa.Enum("todo", "doing", "blocked", "done"',
    ),
}


def models_v2() -> str:
    text = MODELS_V1
    for old, new in CHANGES.values():
        assert old in text, old
        text = text.replace(old, new)
    return text
