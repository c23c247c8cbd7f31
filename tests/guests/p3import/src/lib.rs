//! Imports `example:missing/oracle`, which Skiff does not provide.

mod missing {
    wit_bindgen::generate!({
        inline: "
            package example:missing;
            interface oracle { ask: func() -> u32; }
            world needs { import oracle; }
        ",
        world: "needs",
    });
}

async fn handle(_req: skiff_sdk::service::Request) -> String {
    format!("{}", missing::example::missing::oracle::ask())
}

skiff_sdk::http_service!(handle);
