-- Plans every tenant can subscribe to; shared by all tenants.
CREATE TABLE plans (
    id serial PRIMARY KEY,
    code text NOT NULL UNIQUE,
    monthly_cents integer NOT NULL
);
INSERT INTO plans (code, monthly_cents) VALUES ('free', 0), ('pro', 2900);

-- mtm:down
DROP TABLE plans;
