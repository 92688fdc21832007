//! Validation of products, patches and commands against the category schema.

use super::*;
use crate::categories::{self, AttrKind, Schema};
use serde_json::json;

fn mug() -> serde_json::Value {
    json!({
        "title": "Stoneware mug, 330 ml",
        "description": "Hand-glazed.\nDishwasher safe.",
        "category": "home/kitchen/mugs",
        "attributes": {"capacity_ml": 330, "material": "stoneware", "dishwasher_safe": true, "brand": "Acme"},
        "price_minor": 1299,
        "currency": "EUR",
        "stock": 40,
        "images": ["https://cdn.example.com/mugs/1.jpg"]
    })
}

fn fields_of(errors: Vec<FieldError>) -> Vec<String> {
    errors.into_iter().map(|e| e.field).collect()
}

fn with(mut body: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    body[key] = value;
    body
}

#[test]
fn the_shipped_schema_loads_with_realistic_leaves() {
    let schema = Schema::from_toml(categories::SHIPPED).expect("the shipped schema is valid");
    let leaves: Vec<_> = schema.leaves().map(|c| c.path.as_str()).collect();
    assert!((20..=40).contains(&leaves.len()), "{leaves:?}");
    for path in
        ["home/kitchen/mugs", "electronics/audio/headphones", "fashion/shoes/sneakers", "books/fiction"]
    {
        assert!(leaves.contains(&path), "{path}");
    }
    assert!(schema.leaf("books").is_none(), "an inner node is not a leaf");
    let fiction = schema.leaf("books/fiction").expect("leaf");
    assert!(fiction.attribute("author").is_some_and(|a| a.required), "inherited from books, required");
    assert_eq!(categories::schema(), &schema);
}

#[test]
fn a_valid_product_passes() {
    let fields = ProductFields::from_json(&mug()).expect("valid");
    assert_eq!(fields.attributes.get("capacity_ml"), Some(&AttrValue::Int(330)));
    assert_eq!(fields.validate(), Ok(()));
}

#[test]
fn every_bad_field_is_named() {
    let body = json!({
        "title": "Mug 4111 1111 1111 1111",
        "description": "x".repeat(5001),
        "category": "home/kitchen/mugs",
        "attributes": {"capacity_ml": 10, "material": "paper", "dishwasher_safe": "yes", "colour": "red"},
        "price_minor": -1,
        "currency": "EUR",
        "stock": 1_000_000_001,
        "images": ["http://cdn.example.com/1.jpg", "https://u:p@cdn.example.com/2.jpg", "not a url"]
    });
    let errors = ProductFields::from_json(&body).expect_err("invalid");
    let mut fields = fields_of(errors.clone());
    fields.sort();
    assert_eq!(
        fields,
        [
            "attributes.capacity_ml",
            "attributes.colour",
            "attributes.dishwasher_safe",
            "attributes.material",
            "description",
            "images[0]",
            "images[1]",
            "images[2]",
            "price_minor",
            "stock",
            "title",
        ]
    );
    let title = errors.iter().find(|e| e.field == "title").expect("title");
    assert!(title.message.contains("card number"), "{title:?}");
}

#[test]
fn structural_errors_are_named_with_the_others() {
    let body = json!({
        "title": 7,
        "category": "home/kitchen/mugs",
        "attributes": {"capacity_ml": [1], "material": "glass"},
        "price_minor": 12.5,
        "currency": "EURO",
        "images": "https://cdn.example.com/1.jpg",
        "colour": "red"
    });
    let mut fields = fields_of(ProductFields::from_json(&body).expect_err("invalid"));
    fields.sort();
    assert_eq!(
        fields,
        ["attributes.capacity_ml", "colour", "currency", "images", "price_minor", "stock", "title"],
        "a bad capacity is not also reported missing"
    );
    assert_eq!(fields_of(ProductFields::from_json(&json!([1])).expect_err("not an object")), ["body"]);
}

#[test]
fn attributes_are_typed_per_category() {
    let check = |attributes: serde_json::Value| {
        ProductFields::from_json(&with(mug(), "attributes", attributes)).map(|_| ()).map_err(fields_of)
    };
    // Integer attributes refuse fractions; number attributes take whole numbers.
    assert_eq!(
        check(json!({"capacity_ml": 330.5, "material": "glass"})),
        Err(vec!["attributes.capacity_ml".into()])
    );
    let pan =
        json!({"category": "home/kitchen/cookware", "attributes": {"material": "copper", "diameter_cm": 24}});
    let mut body = mug();
    body["category"] = pan["category"].clone();
    body["attributes"] = pan["attributes"].clone();
    assert!(ProductFields::from_json(&body).is_ok(), "an integer is a number");
    // Missing required attributes are named.
    assert_eq!(check(json!({})), Err(vec!["attributes.capacity_ml".into(), "attributes.material".into()]));
    // A text attribute: length, control characters, card numbers.
    assert!(check(json!({"capacity_ml": 330, "material": "glass", "brand": "x".repeat(61)})).is_err());
    assert!(check(json!({"capacity_ml": 330, "material": "glass", "brand": "a\u{7}b"})).is_err());
    assert!(check(json!({"capacity_ml": 330, "material": "glass", "brand": "5500 0000 0000 0004"})).is_err());
    // Keys are checked before the schema is asked.
    assert_eq!(
        check(json!({"capacity_ml": 330, "material": "glass", "Bad Key": 1})),
        Err(vec!["attributes.Bad Key".into()])
    );
}

#[test]
fn categories_must_be_known_leaves() {
    for category in ["home/kitchen", "home/kitchen/teapots", "Home/Kitchen/Mugs", "", "home//mugs"] {
        let errors = ProductFields::from_json(&with(mug(), "category", json!(category))).expect_err(category);
        assert_eq!(
            fields_of(errors),
            ["category"],
            "{category:?}: attributes are not judged by a bad category"
        );
    }
}

#[test]
fn titles_and_images_have_limits() {
    let title = |t: &str| ProductFields::from_json(&with(mug(), "title", json!(t))).map(|_| ());
    assert!(title(&"é".repeat(200)).is_ok(), "characters, not bytes");
    assert!(title(&"é".repeat(201)).is_err());
    assert!(title("   ").is_err());
    assert!(title("tab\there").is_err());
    let images =
        |i: serde_json::Value| ProductFields::from_json(&with(mug(), "images", i)).map_err(fields_of);
    let eleven: Vec<_> = (0..11).map(|i| format!("https://cdn.example.com/{i}.jpg")).collect();
    assert_eq!(images(json!(eleven)), Err(vec!["images".into()]));
    let long = format!("https://cdn.example.com/{}", "a".repeat(2048));
    assert_eq!(images(json!([long])), Err(vec!["images[0]".into()]));
    assert_eq!(images(json!(["https://cdn.example.com/a b.jpg"])), Err(vec!["images[0]".into()]));
    assert_eq!(
        images(json!(["/relative.jpg", "ftp://cdn.example.com/1.jpg", "https://"])),
        Err(vec!["images[0]".into(), "images[1]".into(), "images[2]".into()])
    );
}

#[test]
fn patches_are_checked_alone_then_on_the_product() {
    let patch =
        ProductPatch::from_json(&json!({"price_minor": 999, "attributes": {"dishwasher_safe": null}}))
            .expect("valid");
    let product = ProductFields::from_json(&mug()).expect("valid");
    let patched = patch.apply_to(&product);
    assert_eq!(patched.price_minor, 999);
    assert!(!patched.attributes.contains_key("dishwasher_safe"));
    assert_eq!(patched.validate(), Ok(()));
    // Removing a required attribute passes alone and fails on the product.
    let patch = ProductPatch::from_json(&json!({"attributes": {"material": null}})).expect("alone");
    assert_eq!(
        fields_of(patch.apply_to(&product).validate().expect_err("required")),
        ["attributes.material"]
    );
    let mut bad = fields_of(
        ProductPatch::from_json(&json!({"price_minor": -5, "stock": "many", "title": "x"})).expect_err("bad"),
    );
    bad.sort();
    assert_eq!(bad, ["price_minor", "stock", "title"]);
    assert_eq!(fields_of(ProductPatch::from_json(&json!({})).expect_err("empty")), ["body"]);
}

#[test]
fn commands_are_checked_again() {
    let fields = ProductFields::from_json(&mug()).expect("valid");
    let mut cmd = WriteProduct {
        write_id: uuid::Uuid::nil(),
        tenant: "t".into(),
        seller: "s1".into(),
        sku: "MUG-1".into(),
        expected_version: None,
        change: ProductChange::Put { fields },
        actor: "u".into(),
        requested_at: chrono::Utc::now(),
        stock_basis: None,
    };
    assert_eq!(cmd.validate(), Ok(()));
    cmd.sku = "4111111111111111".into();
    cmd.seller = String::new();
    cmd.expected_version = Some(0);
    let mut fields = fields_of(cmd.validate().expect_err("bad"));
    fields.sort();
    assert_eq!(fields, ["expected_version", "seller", "sku"]);
}

#[test]
fn schema_files_with_mistakes_are_refused() {
    for (text, why) in [
        ("[categories.a]\nattributes = [{ key = \"k\", type = \"text\" }]", "max-len"),
        (
            "[categories.a]\nattributes = [{ key = \"k\", type = \"integer\", min = 2, max = 1 }]",
            "min <= max",
        ),
        ("[categories.a]\nattributes = [{ key = \"k\", type = \"enum\", values = [] }]", "values"),
        ("[categories.a]\nattributes = [{ key = \"k\", type = \"bool\", max-len = 3 }]", "does not apply"),
        ("[categories.a]\nattributes = [{ key = \"k\", type = \"date\" }]", "unknown type"),
        ("[categories.\"A/b\"]", "segments"),
        (
            "[categories.a]\nattributes = [{ key = \"k\", type = \"bool\" }]\n[categories.\"a/b\"]\nattributes = [{ key = \"k\", type = \"bool\" }]",
            "defined twice",
        ),
    ] {
        let e = Schema::from_toml(text).expect_err(why);
        assert!(e.to_string().contains(why), "{text}: {e}");
    }
    let ok = Schema::from_toml(
        "[categories.a]\nattributes = [{ key = \"n\", type = \"number\", min = 0, max = 1.5 }]\n[categories.\"a/b\"]",
    )
    .expect("valid");
    let leaf = ok.leaf("a/b").expect("leaf");
    assert_eq!(leaf.attribute("n").map(|a| &a.kind), Some(&AttrKind::Number { min: 0.0, max: 1.5 }));
}
