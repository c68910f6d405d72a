//! spendgate: a sidecar reverse proxy that enforces spend limits on paid AI APIs.
//!
//! The request path, module by module (see `docs/architecture.md`): [`proxy::admit`] finds
//! the route ([`upstream::route`]), identifies the tenant ([`tenant`]), classifies the call with
//! the provider's endpoint table ([`providers`]), estimates and prices it ([`pricing`]), and
//! reserves it against the limits ([`quota`]) in the [`store`], or refuses it
//! ([`quota::refusal`], [`proxy::reply`]); [`proxy::forward`] sends it upstream;
//! [`proxy::meter`] streams the answer back while the provider's extractor reads the usage,
//! and [`proxy::settle`] records the real cost in the store and the [`metrics`]. The shared
//! words (money, windows, metrics kinds, tenant ids) are in [`domain`].

pub mod admin;
pub mod alerts;
pub mod app;
pub mod check;
pub mod config;
pub mod domain;
pub mod metrics;
pub mod pricing;
pub mod process;
pub mod providers;
pub mod proxy;
pub mod quota;
pub mod reload;
pub mod server;
pub mod store;
pub mod tenant;
pub mod upstream;
pub mod usage;
pub mod wire;

#[cfg(test)]
mod layers {
    //! The modules' layers (`docs/architecture.md`): a module may import only modules of a
    //! lower layer. Read from the sources, test code excluded.

    const LAYERS: &[(&str, u8)] = &[
        ("domain", 0),
        ("wire", 0),
        ("config", 1),
        ("tenant", 2),
        ("providers", 2),
        ("pricing", 3),
        ("metrics", 3),
        ("quota", 4),
        ("store", 5),
        ("upstream", 5),
        ("process", 5),
        ("alerts", 6),
        ("app", 7),
        ("proxy", 8),
        ("usage", 8),
        ("reload", 8),
        ("admin", 9),
        ("check", 9),
        ("server", 10),
    ];

    fn layer(module: &str) -> u8 {
        LAYERS
            .iter()
            .find(|(m, _)| *m == module)
            .map(|(_, l)| *l)
            .unwrap_or_else(|| panic!("module `{module}` has no layer in docs/architecture.md and this table"))
    }

    /// `crate::<module>` references in a source text, test code and comments left out.
    fn imports(text: &str) -> Vec<String> {
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let mut out = Vec::new();
        for line in code.lines() {
            let line = line.split("//").next().unwrap_or("");
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        }
        out
    }

    #[test]
    fn every_import_points_to_a_lower_layer() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![src.clone()];
        let mut violations = Vec::new();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
                if !rel.ends_with(".rs") || rel.ends_with("tests.rs") || rel == "lib.rs" || rel == "main.rs" {
                    continue;
                }
                let module = rel.split(['/', '.']).next().unwrap().to_string();
                let own = layer(&module);
                for used in imports(&std::fs::read_to_string(&path).unwrap()) {
                    if used != module && layer(&used) >= own {
                        violations.push(format!("{rel}: {module} (layer {own}) imports {used} (layer {})", layer(&used)));
                    }
                }
            }
        }
        assert!(violations.is_empty(), "imports that do not point down:\n{}", violations.join("\n"));
    }
}
