//! Schemas the `ToSchema` derive cannot write itself (feature `openapi`).

use utoipa::{
    PartialSchema,
    openapi::{
        RefOr,
        schema::{ObjectBuilder, OneOfBuilder, Schema, Type},
    },
};

/// `ProductPatch::attributes`: a map whose values are an attribute value or `null`
/// (remove the attribute). The derive cannot put a `oneOf` in `additionalProperties`.
pub fn attribute_patch() -> RefOr<Schema> {
    let value_or_null = OneOfBuilder::new()
        .item(crate::catalog::AttrValue::schema())
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .build();
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(Schema::OneOf(value_or_null)))
        .description(Some("attributes to set; an attribute set to null is removed"))
        .into()
}
