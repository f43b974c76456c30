//! Hostile test guest: imports an interface no Gatehouse sidecar provides
//! (`evil:net/raw`). The sidecar must refuse it at load time, naming the
//! import, instead of failing obscurely at instantiation.

wit_bindgen::generate!({
    inline: r#"
        package evil:net;

        interface raw {
            connect: func(host: string) -> u32;
        }

        world foreign {
            import raw;
            export run: func() -> u32;
        }
    "#,
});

struct Foreign;

impl Guest for Foreign {
    fn run() -> u32 {
        evil::net::raw::connect("169.254.169.254")
    }
}

export!(Foreign);
