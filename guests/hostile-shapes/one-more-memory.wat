;; One extra core instance with a 30 MiB memory, every page written by its
;; start function. With the plugin's own 4 MiB that is two memories (the
;; most a component may have) and 34 MiB: each under a 32 MiB limit, the
;; two together over it.
(core module $hog
  (memory 480)
  (func $touch (local $at i32)
    (loop $pages
      (i32.store8 (local.get $at) (i32.const 1))
      (local.set $at (i32.add (local.get $at) (i32.const 65536)))
      (br_if $pages (i32.lt_u (local.get $at) (i32.const 31457280)))))
  (start $touch))
(core instance (instantiate $hog))
