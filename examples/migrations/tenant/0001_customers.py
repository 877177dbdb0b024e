"""Customers of a tenant: created with Alembic's op, in the tenant's own schema."""

import sqlalchemy as sa


def up(op):
    op.create_table(
        "customers",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("email", sa.Text, nullable=False, unique=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )


def down(op):
    op.drop_table("customers")
