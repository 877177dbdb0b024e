CREATE TABLE invoices (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
    status text NOT NULL DEFAULT 'draft'
);
CREATE INDEX invoices_customer_id_idx ON invoices (customer_id);

-- mtm:down
DROP TABLE invoices;
