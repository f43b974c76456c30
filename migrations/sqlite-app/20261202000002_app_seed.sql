-- Seed rows of the embedded application database.
INSERT INTO products (id, name, price_cents, stock) VALUES
    (1, 'widget', 1250, 10),
    (2, 'gizmo', 9900, 0),
    (3, 'doohickey', 525, 3),
    (4, 'sprocket', 310, 42);
INSERT INTO orders (id, product_id, quantity, created_at) VALUES
    (1, 1, 2, '2026-11-30T10:00:00Z'),
    (2, 3, 1, '2026-11-29T09:00:00Z');
