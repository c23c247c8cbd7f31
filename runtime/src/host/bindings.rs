//! Host bindings generated from `sdk/wit` (world `skiff:function/guest`): the imports
//! Skiff provides beyond WASI and wasi:http, and the event-handler export it may call.

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "skiff:function/guest",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "wasi:keyvalue/store.bucket": super::kv::Bucket,
    },
    trappable_error_type: {
        "wasi:keyvalue/store.error" => super::kv::KvError,
    },
});
