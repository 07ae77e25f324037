//! The generated OpenAPI document: version 3.1, every route, every error as problem+json.

#[test]
fn the_spec_describes_every_route_and_its_errors() {
    let spec = serde_json::to_value(gateway::openapi::spec()).expect("serialisable spec");
    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        spec["openapi"]
    );
    let paths = spec["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/orders", "post"),
        ("/orders/{id}", "get"),
        ("/products", "post"),
        ("/products/{id}", "get"),
    ] {
        let responses = paths[path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} missing"));
        let errors: Vec<_> = responses
            .keys()
            .filter(|code| code.starts_with('4') || code.starts_with('5'))
            .collect();
        assert!(!errors.is_empty(), "{method} {path} documents no error");
        for code in errors {
            let content = responses[code]["content"]
                .as_object()
                .expect("error content");
            assert!(
                content.contains_key("application/problem+json"),
                "{method} {path} {code} is not problem+json"
            );
        }
    }
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());
}
