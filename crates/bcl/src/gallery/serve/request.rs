//! What a `POST /search` request asks: the JSON body (parsed with its batch bounded before it
//! is all read), the query-string options, or an image embedded by the server's query model;
//! every refusal a status and a reason.

use axum::http::{header, HeaderMap, StatusCode};
use serde::Deserialize;

use super::ServeState;
use crate::data::Dataset;

/// The JSON body of `POST /search`.
#[derive(Debug, Default)]
pub(super) struct SearchBody {
    vector: Option<Vec<f32>>,
    vectors: Option<Vec<Vec<f32>>>,
    k: Option<usize>,
    exact: Option<bool>,
}

/// Parses a [`SearchBody`] and stops at the first query vector past `max_queries`, so an
/// oversized batch is refused before it is all parsed (`over` tells that error from others).
/// Written as a seed because serde's derive cannot carry a run-time limit into a field.
pub(super) struct BodySeed<'a> {
    max_queries: usize,
    over: &'a std::cell::Cell<bool>,
}

pub(super) const BODY_FIELDS: &[&str] = &["vector", "vectors", "k", "exact"];

impl<'de> serde::de::DeserializeSeed<'de> for BodySeed<'_> {
    type Value = SearchBody;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<SearchBody, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BodySeed<'_> {
    type Value = SearchBody;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object with \"vector\" or \"vectors\", and optionally \"k\", \"exact\"")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SearchBody, A::Error> {
        use serde::de::Error;
        let mut b = SearchBody::default();
        while let Some(key) = map.next_key::<String>()? {
            let dup = || A::Error::custom(format!("duplicate field `{key}`"));
            match key.as_str() {
                "vector" if b.vector.is_none() => b.vector = Some(map.next_value()?),
                "vectors" if b.vectors.is_none() => {
                    b.vectors = Some(map.next_value_seed(VectorsSeed {
                        max: self.max_queries,
                        over: self.over,
                    })?)
                }
                "k" if b.k.is_none() => b.k = Some(map.next_value()?),
                "exact" if b.exact.is_none() => b.exact = Some(map.next_value()?),
                "vector" | "vectors" | "k" | "exact" => return Err(dup()),
                other => return Err(A::Error::unknown_field(other, BODY_FIELDS)),
            }
        }
        Ok(b)
    }
}

/// A list of query vectors, refused at its `max + 1`-th element.
pub(super) struct VectorsSeed<'a> {
    max: usize,
    over: &'a std::cell::Cell<bool>,
}

impl<'de> serde::de::DeserializeSeed<'de> for VectorsSeed<'_> {
    type Value = Vec<Vec<f32>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Vec<Vec<f32>>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for VectorsSeed<'_> {
    type Value = Vec<Vec<f32>>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of query vectors")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<Vec<f32>>()? {
            if out.len() == self.max {
                self.over.set(true);
                return Err(serde::de::Error::custom("too many query vectors"));
            }
            out.push(v);
        }
        Ok(out)
    }
}

/// Query-string options of `POST /search` (the only options for an image body).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchParams {
    pub(super) k: Option<usize>,
    pub(super) exact: Option<bool>,
}

pub(super) fn bad(status: StatusCode, reason: impl Into<String>) -> (StatusCode, String) {
    (status, reason.into())
}

/// A 4xx or 5xx answer: the status and the reason.
pub(super) type Refusal = (StatusCode, String);

/// Turns the request into query vectors, k and exactness, or a 4xx.
pub(super) fn parse_request(
    st: &ServeState,
    headers: &HeaderMap,
    params: SearchParams,
    body: &[u8],
) -> Result<(Vec<f32>, usize, bool), Refusal> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (queries, k, exact) = match ctype.as_str() {
        "application/json" => json_queries(st, &params, body)?,
        "image/png" | "image/jpeg" => (
            image_query(st, body)?,
            params.k.unwrap_or(st.cfg.default_k),
            params.exact.unwrap_or(st.cfg.exact),
        ),
        "" => {
            return Err(bad(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "no Content-Type: send application/json, image/png or image/jpeg",
            ))
        }
        other => {
            return Err(bad(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Type {other} is not accepted: send application/json, image/png or image/jpeg"
                ),
            ))
        }
    };
    if k == 0 || k > st.cfg.max_k {
        return Err(bad(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("k = {k}: expected 1 to {}", st.cfg.max_k),
        ));
    }
    Ok((queries, k, exact))
}

/// The query vectors, k and exactness of a JSON body (its own settings over the URL's).
pub(super) fn json_queries(
    st: &ServeState,
    params: &SearchParams,
    body: &[u8],
) -> Result<(Vec<f32>, usize, bool), Refusal> {
    // through an adapter, vectors are the query model's own embeddings
    let dim = match &st.adapter {
        Some(a) => {
            if a.old.is_some() {
                return Err(bad(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "this server searches through a {} adapter, which needs both models' \
                         embedding of each query: send images",
                        a.link.kind
                    ),
                ));
            }
            let a = a.adapter.lock().unwrap_or_else(|p| p.into_inner());
            a.card.from.dim
        }
        None => st.store().manifest().dim,
    };
    let max = st.cfg.max_queries;
    let over = std::cell::Cell::new(false);
    let seed = BodySeed {
        max_queries: max,
        over: &over,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let b = serde::de::DeserializeSeed::deserialize(seed, &mut de)
        .and_then(|b| de.end().map(|()| b))
        .map_err(|e| match over.get() {
            true => bad(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("more than {max} query vectors; at most {max} per request"),
            ),
            false => bad(
                StatusCode::BAD_REQUEST,
                format!("malformed JSON body: {e}; expected {{\"vector\": [..], \"k\": 10}}"),
            ),
        })?;
    let rows = match (b.vector, b.vectors) {
        (Some(v), None) => vec![v],
        (None, Some(vs)) => vs,
        _ => {
            return Err(bad(
                StatusCode::BAD_REQUEST,
                "give exactly one of \"vector\" and \"vectors\"",
            ))
        }
    };
    if rows.len() > max {
        return Err(bad(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{} query vectors; at most {max} per request", rows.len()),
        ));
    }
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != dim) {
        return Err(bad(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "query vector {i} has {} values; {} {dim}",
                r.len(),
                match st.adapter {
                    Some(_) => "the query model (whose embeddings the adapter maps) embeds in",
                    None => "the gallery's dimension is",
                }
            ),
        ));
    }
    let n = rows.len();
    let mut queries = rows.concat();
    if st.adapter.is_some() {
        let own = tch::Tensor::from_slice(&queries).view([n as i64, dim as i64]);
        queries = adapted(st, &own, None)?;
    }
    Ok((
        queries,
        b.k.or(params.k).unwrap_or(st.cfg.default_k),
        b.exact.or(params.exact).unwrap_or(st.cfg.exact),
    ))
}

/// The embedding of an image body by the server's query model.
pub(super) fn image_query(st: &ServeState, body: &[u8]) -> Result<Vec<f32>, Refusal> {
    let (Some(emb), Some(shape)) = (&st.embedder, st.input_shape) else {
        return Err(bad(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this server has no query model to embed images with; it takes vectors only",
        ));
    };
    // decoded and resized before the model's lock: requests decode in parallel and queue only
    // for the forward pass
    let pixels = crate::data::images::image_for_model(body, shape)
        .map_err(|e| bad(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let one = Dataset {
        pixels,
        labels: vec![0],
        ids: vec![0],
        channels: shape[0],
        rows: shape[1],
        cols: shape[2],
        classes: 1,
    };
    let Some(a) = &st.adapter else {
        let dim = st.store().manifest().dim;
        let emb = emb.lock().unwrap_or_else(|p| p.into_inner());
        return crate::gallery::ops::embed_items(&emb, &one, &[0], 1, dim)
            .map_err(|e| bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
    };
    // through an adapter: the query model's own embedding, and the gallery model's for slerp
    let own = emb
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .embed_dataset(&one, 1);
    let old = a.old.as_ref().map(|o| {
        o.lock()
            .unwrap_or_else(|p| p.into_inner())
            .embed_dataset(&one, 1)
    });
    adapted(st, &own, old.as_ref())
}

/// Query rows `own` of the server's query model mapped into the gallery's space by its
/// adapter (`old`: the gallery model's embeddings of the same queries, for slerp).
fn adapted(
    st: &ServeState,
    own: &tch::Tensor,
    old: Option<&tch::Tensor>,
) -> Result<Vec<f32>, Refusal> {
    let Some(a) = &st.adapter else {
        return Err(bad(StatusCode::INTERNAL_SERVER_ERROR, "no adapter"));
    };
    let mapped = a
        .adapter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .apply(own, old)
        .map_err(|e| bad(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    Vec::<f32>::try_from(mapped.contiguous().view([-1]))
        .map_err(|e| bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
