;; A minimal plugin written by hand: exports `handle` (echoes its input)
;; and `info`, the way any component targeting the plugin world does. The
;; hostile shapes in this directory are spliced in at the marker below, so
;; each is a complete plugin that passes the load-time checks and whose
;; extra core instances and memories are created when it is instantiated.
(component
  (core module $main
    (memory (export "memory") 64)
    (global $heap (mut i32) (i32.const 4096))
        ;; A bump allocator: enough for the one input an instance receives.
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at
        (i32.and
          (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get 2))))
      (global.set $heap (i32.add (local.get $at) (local.get 3)))
      (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
        (then
          (drop (memory.grow
            (i32.add (i32.div_u (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
                                (i32.const 65536))
                     (i32.const 1))))))
      (local.get $at))
    ;; plugin-info at 64: name "hostile-shapes" (16, 14), version "0.1.0" (30, 5), description "" (35, 0)
    (data (i32.const 16) "hostile-shapes0.1.0")
    (data (i32.const 64) "\10\00\00\00\0e\00\00\00\1e\00\00\00\05\00\00\00\23\00\00\00\00\00\00\00")
    (func (export "info") (result i32) (i32.const 64))
    ;; Writes one byte per page, so the plugin's own 4 MiB are really used.
    (func $touch (local $at i32)
      (local.set $at (i32.const 65536))
      (loop $pages
        (i32.store8 (local.get $at) (i32.const 1))
        (local.set $at (i32.add (local.get $at) (i32.const 65536)))
        (br_if $pages (i32.lt_u (local.get $at) (i32.const 4194304)))))
    (start $touch)
    ;; handle: result<document, error> at 128, tag 0 (ok), document at offset 8
    (func (export "handle") (param i32 i32 i32 i32) (result i32)
      (i32.store8 (i32.const 128) (i32.const 0))
      (i32.store (i32.const 136) (local.get 0))
      (i32.store (i32.const 140) (local.get 1))
      (i32.store (i32.const 144) (local.get 2))
      (i32.store (i32.const 148) (local.get 3))
      (i32.const 128)))
  (core instance $main (instantiate $main))

  (type $document' (record (field "content-type" string) (field "body" (list u8))))
  (export $document "document" (type $document'))
  (type $error-kind' (enum "denied" "invalid-input" "not-found" "conflict" "quota-exceeded"
                           "rate-limited" "timeout" "unavailable" "internal"))
  (export $error-kind "error-kind" (type $error-kind'))
  (type $error' (record (field "kind" $error-kind) (field "message" string) (field "retry-after-ms" (option u64))))
  (export $error "error" (type $error'))
  (type $plugin-info' (record (field "name" string) (field "version" string) (field "description" string)))
  (export $plugin-info "plugin-info" (type $plugin-info'))

  (func $handle (param "input" $document) (result (result $document (error $error)))
    (canon lift (core func $main "handle") (memory (core memory $main "memory")) (realloc (core func $main "realloc"))))
  (func $info (result $plugin-info)
    (canon lift (core func $main "info") (memory (core memory $main "memory"))))
  (export "handle" (func $handle))
  (export "info" (func $info))

  ;; HOSTILE SHAPE
)
