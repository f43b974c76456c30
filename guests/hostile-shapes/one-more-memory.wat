;; One extra core instance with a 48 MiB memory, every page written by its
;; start function. With the plugin's own memory that is two memories, the
;; most a component may have: their sizes count against one limit.
(core module $hog
  (memory 768)
  (func $touch (local $at i32)
    (loop $pages
      (i32.store8 (local.get $at) (i32.const 1))
      (local.set $at (i32.add (local.get $at) (i32.const 65536)))
      (br_if $pages (i32.lt_u (local.get $at) (i32.const 50331648)))))
  (start $touch))
(core instance (instantiate $hog))
