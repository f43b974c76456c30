;; Six tables of 20,000 elements each, in one extra core instance (six
;; tables plus the plugin's own stay within the per-component table count):
;; 120,000 elements, past the per-invocation cap of 100,000 though each
;; table alone is within the pool's per-table size.
(core module $tables
  (table 20000 funcref)
  (table 20000 funcref)
  (table 20000 funcref)
  (table 20000 funcref)
  (table 20000 funcref)
  (table 20000 funcref))
(core instance (instantiate $tables))
