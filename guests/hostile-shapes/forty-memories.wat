;; 40 core instances, each with a 64 MiB memory written by its start
;; function: 2.5 GiB of host memory from a 64 MiB policy if memories were
;; limited one by one.
(component $four
  (core module $hog
    (memory 1024)
    (func $touch (local $at i32)
      (loop $pages
        (i32.store8 (local.get $at) (i32.const 1))
        (local.set $at (i32.add (local.get $at) (i32.const 65536)))
        (br_if $pages (i32.lt_u (local.get $at) (i32.const 67108864)))))
    (start $touch))
  (core instance (instantiate $hog))
  (core instance (instantiate $hog))
  (core instance (instantiate $hog))
  (core instance (instantiate $hog)))
(instance (instantiate $four))
(instance (instantiate $four))
(instance (instantiate $four))
(instance (instantiate $four))
(instance (instantiate $four))
(instance (instantiate $four))
(instance (instantiate $four))
(instance (instantiate $four))
(instance (instantiate $four))
(instance (instantiate $four))
