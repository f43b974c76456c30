;; Six extra core instances with a table of 20,000 elements each (seven
;; tables with the plugin's, within the per-component count of eight):
;; 120,000 elements, past the per-invocation cap of 100,000 though each
;; table alone is within the pool's per-table size.
(core module $table (table 20000 funcref))
(core instance (instantiate $table))
(core instance (instantiate $table))
(core instance (instantiate $table))
(core instance (instantiate $table))
(core instance (instantiate $table))
(core instance (instantiate $table))
