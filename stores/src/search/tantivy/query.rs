//! A [`SearchRequest`] as a tantivy query.
//!
//! Filters are constant-score terms and ranges (they do not move the ranking); each query
//! word is a disjunction over title and description of an exact term (BM25), a fuzzy term
//! (edit budget of [`crate::search::text`], transpositions cost one) and, for the last
//! word, a prefix; title clauses weigh more. All words are required.

use super::schema::{Fields, attr_term};
use crate::search::SearchRequest;
use crate::search::text::{QueryWord, has_unindexed_word, query_words};
use std::ops::Bound;
use tantivy::Term;
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, ConstScoreQuery, EmptyQuery, FuzzyTermQuery, Occur, Query,
    RangeQuery, TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption};

/// Title matches count this much more than description matches.
const TITLE_BOOST: f32 = 3.0;
/// A typo-tolerant or prefix match counts this fraction of an exact one.
const LOOSE_FACTOR: f32 = 0.5;

pub fn build(fields: &Fields, request: &SearchRequest) -> Box<dyn Query> {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    let filter = |q: Box<dyn Query>| -> (Occur, Box<dyn Query>) {
        (Occur::Must, Box::new(ConstScoreQuery::new(q, 0.0)))
    };
    clauses.push(filter(raw_term(fields.tenant, &request.tenant)));
    clauses.push(filter(Box::new(TermQuery::new(
        Term::from_field_u64(fields.live, 1),
        IndexRecordOption::Basic,
    ))));
    if let Some(path) = request.category_path() {
        clauses.push(filter(raw_term(fields.category, &path)));
    }
    if let Some(seller) = &request.seller {
        clauses.push(filter(raw_term(fields.seller, seller)));
    }
    if request.min_price.is_some() || request.max_price.is_some() {
        let bound = |p: Option<i64>| {
            p.map_or(Bound::Unbounded, |p| Bound::Included(Term::from_field_i64(fields.price, p)))
        };
        clauses.push(filter(Box::new(RangeQuery::new(bound(request.min_price), bound(request.max_price)))));
    }
    for attr in &request.attributes {
        clauses.push(filter(raw_term(fields.attrs, &attr_term(&attr.key, &attr.value_string()))));
    }
    if let Some(in_stock) = request.in_stock {
        let (lower, upper) = if in_stock {
            (Bound::Included(1), Bound::Unbounded)
        } else {
            (Bound::Unbounded, Bound::Included(0))
        };
        let term = |b: Bound<i64>| match b {
            Bound::Included(v) => Bound::Included(Term::from_field_i64(fields.stock, v)),
            _ => Bound::Unbounded,
        };
        clauses.push(filter(Box::new(RangeQuery::new(term(lower), term(upper)))));
    }
    if let Some(text) = request.text() {
        if has_unindexed_word(text) {
            return Box::new(EmptyQuery);
        }
        for word in query_words(text) {
            clauses.push((Occur::Must, word_query(fields, &word)));
        }
    }
    if clauses.is_empty() {
        return Box::new(AllQuery);
    }
    Box::new(BooleanQuery::new(clauses))
}

fn raw_term(field: Field, value: &str) -> Box<dyn Query> {
    Box::new(TermQuery::new(Term::from_field_text(field, value), IndexRecordOption::Basic))
}

fn word_query(fields: &Fields, word: &QueryWord) -> Box<dyn Query> {
    let mut should: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    for (field, weight) in [(fields.title, TITLE_BOOST), (fields.description, 1.0)] {
        let term = Term::from_field_text(field, &word.text);
        should.push((
            Occur::Should,
            Box::new(BoostQuery::new(
                Box::new(TermQuery::new(term.clone(), IndexRecordOption::WithFreqs)),
                weight,
            )),
        ));
        if word.max_edits > 0 {
            should.push((
                Occur::Should,
                Box::new(BoostQuery::new(
                    Box::new(FuzzyTermQuery::new(term.clone(), word.max_edits, true)),
                    weight * LOOSE_FACTOR,
                )),
            ));
        }
        if word.prefix {
            should.push((
                Occur::Should,
                Box::new(BoostQuery::new(
                    Box::new(FuzzyTermQuery::new_prefix(term, 0, true)),
                    weight * LOOSE_FACTOR,
                )),
            ));
        }
    }
    Box::new(BooleanQuery::new(should))
}
