"""A data migration: every tenant starts with one customer named after it."""

import sqlalchemy as sa


def up(op, ctx):
    op.get_bind().execute(
        sa.text("INSERT INTO customers (name, email) VALUES (:n, :e)"),
        {"n": f"Welcome customer of {ctx.schema}", "e": f"hello@{ctx.schema}.example"},
    )


def down(op):
    op.execute("DELETE FROM customers WHERE email LIKE 'hello@%'")
