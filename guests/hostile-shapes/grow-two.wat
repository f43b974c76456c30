;; One extra core instance whose memory starts empty and is grown by 200
;; pages (12.5 MiB) when it starts: with the plugin's own 4 MiB, 16.5 MiB
;; reached by growing, not by declared sizes.
(core module $grower
  (memory 0)
  (func $grow (drop (memory.grow (i32.const 200))) (i32.store8 (i32.const 13107199) (i32.const 1)))
  (start $grow))
(core instance (instantiate $grower))
