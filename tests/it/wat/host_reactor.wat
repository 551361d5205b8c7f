;; A reactor whose imports only a JavaScript host provides (as ruby.wasm's).
(module
  (import "rb-js-abi-host" "eval-js" (func (param i32 i32 i32)))
  (import "rb-js-abi-host" "global-this" (func (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_initialize"))
  (func (export "rb_eval_string_protect") (param i32 i32) (result i32) i32.const 0))
