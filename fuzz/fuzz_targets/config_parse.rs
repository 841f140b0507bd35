//! The cluster config (TOML, `tandem_admin::config`), from text an operator wrote.
//!
//! Properties: parsing never panics; an error names the file; a config that parses writes
//! back (`to_toml`) to text that parses to an equal config.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tandem_admin::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/tandem/tandem.toml");
    match Config::parse(text, path) {
        Ok(config) => {
            let written = config.to_toml();
            let again = Config::parse(&written, path)
                .unwrap_or_else(|error| panic!("written config does not parse: {error}\n{written}"));
            assert_eq!(again, config, "config changed across to_toml/parse");
        }
        Err(error) => assert!(error.to_string().starts_with("/etc/tandem/tandem.toml")),
    }
});
