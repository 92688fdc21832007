//! A form body (`application/x-www-form-urlencoded`), fields kept in order: a
//! selection of dead letters repeats the `seq` field, which axum's `Form` (a serde
//! struct) cannot read.

#[derive(Debug, Default, Clone)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form(url::form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `name`, if sent and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| v.as_str())
    }

    /// Every value of `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every field, in order (to carry a form through a confirmation page).
    pub fn fields(&self) -> &[(String, String)] {
        &self.0
    }
}
