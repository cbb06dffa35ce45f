//! Image lists of the standard retrieval benchmarks, read from the files their publishers
//! distribute, plus class-per-folder trees and CSV/TSV lists of one's own: Stanford Online
//! Products (`Ebay_train.txt`, `Ebay_test.txt`), In-shop (`list_eval_partition.txt`), Google
//! Landmarks v2 (`train.csv`, `train_clean.csv`, `index.csv`, `retrieval_solution_v2.1.csv`).
//! Each reader validates the layout and reports the file, the line and the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::DataError;

/// One image of a list: its path relative to the data set's root and its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageItem {
    /// Path relative to the root directory.
    pub path: PathBuf,
    /// Class index (contiguous from 0 within the list's class map).
    pub label: i64,
}

/// A list of images with its class names (label `i` is `classes[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageList {
    /// The items.
    pub items: Vec<ImageItem>,
    /// Class names (the publisher's ids), indexed by label.
    pub classes: Vec<String>,
}

impl ImageList {
    /// Splits off the last `n` items of each class (in list order) as a held-out list; classes
    /// with `n` items or fewer keep them all for training.
    pub fn hold_out_last_per_class(&self, n: usize) -> (Self, Self) {
        let mut total = vec![0usize; self.classes.len()];
        self.items
            .iter()
            .for_each(|it| total[it.label as usize] += 1);
        let mut seen = vec![0usize; self.classes.len()];
        let (mut keep, mut held) = (Vec::new(), Vec::new());
        for it in &self.items {
            let c = it.label as usize;
            seen[c] += 1;
            if total[c] > n && seen[c] > total[c] - n {
                held.push(it.clone());
            } else {
                keep.push(it.clone());
            }
        }
        let mk = |items| Self {
            items,
            classes: self.classes.clone(),
        };
        (mk(keep), mk(held))
    }

    /// The first `n` items of each class, in list order.
    pub fn take_per_class(&self, n: usize) -> Self {
        let mut seen = vec![0usize; self.classes.len()];
        let items = self
            .items
            .iter()
            .filter(|it| {
                let c = &mut seen[it.label as usize];
                *c += 1;
                *c <= n
            })
            .cloned()
            .collect();
        Self {
            items,
            classes: self.classes.clone(),
        }
    }

    /// Builds a list from (path, class name) pairs; labels follow the sorted class names
    /// (numerically when every name is a number).
    fn from_named(pairs: Vec<(PathBuf, String)>) -> Self {
        let names: BTreeSet<&String> = pairs.iter().map(|(_, c)| c).collect();
        let mut classes: Vec<String> = names.into_iter().cloned().collect();
        if classes.iter().all(|c| c.parse::<u64>().is_ok()) {
            classes.sort_by_key(|c| c.parse::<u64>().expect("checked"));
        }
        let index: BTreeMap<&str, i64> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i as i64))
            .collect();
        let items = pairs
            .iter()
            .map(|(p, c)| ImageItem {
                path: p.clone(),
                label: index[c.as_str()],
            })
            .collect();
        Self { items, classes }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The labels, in item order.
    pub fn labels(&self) -> Vec<i64> {
        self.items.iter().map(|i| i.label).collect()
    }
}

fn err(path: &Path, line: Option<usize>, reason: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

fn read_text(path: &Path) -> Result<String, DataError> {
    let bytes = super::read_nonempty(path)?;
    String::from_utf8(bytes).map_err(|e| err(path, None, format!("not UTF-8 text: {e}")))
}

/// A relative path from a list, refused when it could escape the root.
fn relative(path: &Path, line: usize, p: &str) -> Result<PathBuf, DataError> {
    let pb = PathBuf::from(p);
    if p.is_empty()
        || pb.is_absolute()
        || pb
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(err(
            path,
            Some(line),
            format!("image path '{p}' must be relative to the data set's root, without '..'"),
        ));
    }
    Ok(pb)
}

/// Stanford Online Products: `Ebay_train.txt` or `Ebay_test.txt` (header `image_id class_id
/// super_class_id path`, then one image per line); classes are the product ids (`class_id`).
pub fn read_sop(path: &Path) -> Result<ImageList, DataError> {
    let text = read_text(path)?;
    let mut lines = text.lines().enumerate();
    let (_, header) = lines.next().expect("non-empty text has a line");
    let cols: Vec<&str> = header.split_whitespace().collect();
    if cols != ["image_id", "class_id", "super_class_id", "path"] {
        return Err(err(
            path,
            Some(1),
            format!(
                "expected the header 'image_id class_id super_class_id path', found '{header}'"
            ),
        ));
    }
    let mut pairs = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 4 {
            return Err(err(
                path,
                Some(n),
                format!("expected 4 fields, found {}", f.len()),
            ));
        }
        for (name, v) in [
            ("image_id", f[0]),
            ("class_id", f[1]),
            ("super_class_id", f[2]),
        ] {
            if v.parse::<u64>().is_err() {
                return Err(err(path, Some(n), format!("{name} '{v}' is not a number")));
            }
        }
        pairs.push((relative(path, n, f[3])?, f[1].to_string()));
    }
    if pairs.is_empty() {
        return Err(err(path, None, "no image listed"));
    }
    Ok(ImageList::from_named(pairs))
}

/// The three parts of In-shop's evaluation partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InShop {
    /// Training images (their own class map).
    pub train: ImageList,
    /// Query images; labels shared with `gallery`.
    pub query: ImageList,
    /// Gallery images.
    pub gallery: ImageList,
}

/// In-shop Clothes Retrieval: `list_eval_partition.txt` (a count, the header `image_name item_id
/// evaluation_status`, then one image per line with status train, query or gallery). Query and
/// gallery share one class map (the item ids); training has its own.
pub fn read_inshop(path: &Path) -> Result<InShop, DataError> {
    let text = read_text(path)?;
    let mut lines = text.lines().enumerate();
    let (_, first) = lines.next().expect("non-empty text has a line");
    let count: usize = first.trim().parse().map_err(|_| {
        err(
            path,
            Some(1),
            format!("the first line must be the number of images, found '{first}'"),
        )
    })?;
    let header = lines.next().map(|(_, l)| l).unwrap_or("");
    if header.split_whitespace().collect::<Vec<_>>()
        != ["image_name", "item_id", "evaluation_status"]
    {
        return Err(err(
            path,
            Some(2),
            format!("expected the header 'image_name item_id evaluation_status', found '{header}'"),
        ));
    }
    let (mut train, mut query, mut gallery) = (Vec::new(), Vec::new(), Vec::new());
    for (i, line) in lines {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 3 {
            return Err(err(
                path,
                Some(n),
                format!("expected 3 fields, found {}", f.len()),
            ));
        }
        let item = (relative(path, n, f[0])?, f[1].to_string());
        match f[2] {
            "train" => train.push(item),
            "query" => query.push(item),
            "gallery" => gallery.push(item),
            s => {
                return Err(err(
                    path,
                    Some(n),
                    format!("evaluation_status '{s}' is not train, query or gallery"),
                ))
            }
        }
    }
    let found = train.len() + query.len() + gallery.len();
    if found != count {
        return Err(err(
            path,
            None,
            format!("the first line announces {count} images, the file lists {found}"),
        ));
    }
    if query.is_empty() || gallery.is_empty() {
        return Err(err(path, None, "no query or no gallery image"));
    }
    // one class map over query and gallery so that labels compare across the two
    let nq = query.len();
    let eval = ImageList::from_named(query.into_iter().chain(gallery).collect());
    let split = |items: Vec<ImageItem>| ImageList {
        items,
        classes: eval.classes.clone(),
    };
    let mut items = eval.items.clone();
    let g = items.split_off(nq);
    Ok(InShop {
        train: ImageList::from_named(train),
        query: split(items),
        gallery: split(g),
    })
}

/// GLDv2's path of an image id under a part (`train`, `index`, `test`): `part/a/b/c/abc….jpg`.
pub fn gldv2_path(part: &str, id: &str) -> PathBuf {
    let c: Vec<char> = id.chars().collect();
    PathBuf::from(part)
        .join(c[0].to_string())
        .join(c[1].to_string())
        .join(c[2].to_string())
        .join(format!("{id}.jpg"))
}

fn check_gldv2_id(path: &Path, line: usize, id: &str) -> Result<(), DataError> {
    if id.len() != 16 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(err(
            path,
            Some(line),
            format!("image id '{id}' is not 16 hexadecimal digits"),
        ));
    }
    Ok(())
}

fn csv_reader(path: &Path) -> Result<(csv::Reader<std::fs::File>, Vec<String>), DataError> {
    let f = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut r = csv::ReaderBuilder::new().has_headers(true).from_reader(f);
    let header: Vec<String> = r
        .headers()
        .map_err(|e| err(path, Some(1), format!("unreadable header: {e}")))?
        .iter()
        .map(|s| s.to_string())
        .collect();
    Ok((r, header))
}

fn expect_header(path: &Path, found: &[String], want: &[&str]) -> Result<(), DataError> {
    if found.iter().map(|s| s.as_str()).collect::<Vec<_>>() != want {
        return Err(err(
            path,
            Some(1),
            format!(
                "expected the header '{}', found '{}'",
                want.join(","),
                found.join(",")
            ),
        ));
    }
    Ok(())
}

/// GLDv2 `train.csv` (`id,url,landmark_id`): every training image with its landmark.
pub fn read_gldv2_train(path: &Path) -> Result<ImageList, DataError> {
    let (mut r, header) = csv_reader(path)?;
    expect_header(path, &header, &["id", "url", "landmark_id"])?;
    let mut pairs = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let n = i + 2;
        let rec = rec.map_err(|e| err(path, Some(n), e.to_string()))?;
        let (id, lm) = (&rec[0], &rec[2]);
        check_gldv2_id(path, n, id)?;
        if lm.parse::<u64>().is_err() {
            return Err(err(
                path,
                Some(n),
                format!("landmark_id '{lm}' is not a number"),
            ));
        }
        pairs.push((gldv2_path("train", id), lm.to_string()));
    }
    if pairs.is_empty() {
        return Err(err(path, None, "no image listed"));
    }
    Ok(ImageList::from_named(pairs))
}

/// GLDv2 `train_clean.csv` (`landmark_id,images`, the images space-separated): the cleaned
/// training subset.
pub fn read_gldv2_clean(path: &Path) -> Result<ImageList, DataError> {
    let (mut r, header) = csv_reader(path)?;
    expect_header(path, &header, &["landmark_id", "images"])?;
    let mut pairs = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let n = i + 2;
        let rec = rec.map_err(|e| err(path, Some(n), e.to_string()))?;
        let lm = &rec[0];
        if lm.parse::<u64>().is_err() {
            return Err(err(
                path,
                Some(n),
                format!("landmark_id '{lm}' is not a number"),
            ));
        }
        for id in rec[1].split_whitespace() {
            check_gldv2_id(path, n, id)?;
            pairs.push((gldv2_path("train", id), lm.to_string()));
        }
    }
    if pairs.is_empty() {
        return Err(err(path, None, "no image listed"));
    }
    Ok(ImageList::from_named(pairs))
}

/// GLDv2 `index.csv` (`id`): the retrieval database, in file order.
pub fn read_gldv2_index(path: &Path) -> Result<Vec<String>, DataError> {
    let (mut r, header) = csv_reader(path)?;
    expect_header(path, &header, &["id"])?;
    let mut ids = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let n = i + 2;
        let rec = rec.map_err(|e| err(path, Some(n), e.to_string()))?;
        check_gldv2_id(path, n, &rec[0])?;
        ids.push(rec[0].to_string());
    }
    Ok(ids)
}

/// One scored query of GLDv2's retrieval solution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gldv2Query {
    /// Test image id.
    pub id: String,
    /// Positions in the index list of the relevant index images.
    pub relevant: Vec<usize>,
    /// `Public` or `Private`.
    pub usage: String,
}

/// GLDv2 `retrieval_solution_v2.1.csv` (`id,images,Usage`) against the index ids: the scored
/// queries (Usage `Ignored` rows, whose images are `None`, are skipped), each with the
/// positions of its relevant index images.
pub fn read_gldv2_solution(path: &Path, index: &[String]) -> Result<Vec<Gldv2Query>, DataError> {
    let (mut r, header) = csv_reader(path)?;
    expect_header(path, &header, &["id", "images", "Usage"])?;
    let pos: BTreeMap<&str, usize> = index
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let n = i + 2;
        let rec = rec.map_err(|e| err(path, Some(n), e.to_string()))?;
        let (id, images, usage) = (&rec[0], &rec[1], &rec[2]);
        check_gldv2_id(path, n, id)?;
        match usage {
            "Ignored" => continue,
            "Public" | "Private" => {}
            u => {
                return Err(err(
                    path,
                    Some(n),
                    format!("Usage '{u}' is not Public, Private or Ignored"),
                ))
            }
        }
        let mut relevant = Vec::new();
        for im in images.split_whitespace() {
            let p = pos.get(im).ok_or_else(|| {
                err(
                    path,
                    Some(n),
                    format!("relevant image '{im}' is not in the index list"),
                )
            })?;
            relevant.push(*p);
        }
        if relevant.is_empty() {
            return Err(err(path, Some(n), "a scored query lists no relevant image"));
        }
        out.push(Gldv2Query {
            id: id.to_string(),
            relevant,
            usage: usage.to_string(),
        });
    }
    Ok(out)
}

const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "bmp"];

/// A class-per-folder tree: `root/<class>/<image>`; classes are the folder names (sorted),
/// images the files with an image extension (sorted), hidden entries skipped.
pub fn read_class_folders(root: &Path) -> Result<ImageList, DataError> {
    let io = |source| DataError::Io {
        path: root.to_path_buf(),
        source,
    };
    let mut pairs = Vec::new();
    let mut classes: Vec<_> = std::fs::read_dir(root)
        .map_err(io)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    classes.sort_by_key(|e| e.file_name());
    for c in classes {
        let name = c.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !c.path().is_dir() {
            continue;
        }
        let mut files: Vec<_> = std::fs::read_dir(c.path())
            .map_err(io)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(io)?;
        files.sort_by_key(|e| e.file_name());
        for f in files {
            let p = f.path();
            let ok = p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            if ok && !f.file_name().to_string_lossy().starts_with('.') {
                pairs.push((PathBuf::from(&name).join(f.file_name()), name.clone()));
            }
        }
    }
    if pairs.is_empty() {
        return Err(err(
            root,
            None,
            "no image found: expected one folder per class holding .jpg/.jpeg/.png/.bmp files",
        ));
    }
    Ok(ImageList::from_named(pairs))
}

/// A CSV (or, by extension, TSV) list with the header `path,label`: paths relative to the
/// list's directory (or a root given by the caller), labels any class names.
pub fn read_csv_list(path: &Path) -> Result<ImageList, DataError> {
    let f = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let tsv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("tsv"));
    let mut r = csv::ReaderBuilder::new()
        .delimiter(if tsv { b'\t' } else { b',' })
        .from_reader(f);
    let header: Vec<String> = r
        .headers()
        .map_err(|e| err(path, Some(1), format!("unreadable header: {e}")))?
        .iter()
        .map(|s| s.trim().to_string())
        .collect();
    expect_header(path, &header, &["path", "label"])?;
    let mut pairs = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let n = i + 2;
        let rec = rec.map_err(|e| err(path, Some(n), e.to_string()))?;
        let label = rec[1].trim();
        if label.is_empty() {
            return Err(err(path, Some(n), "empty label"));
        }
        pairs.push((relative(path, n, rec[0].trim())?, label.to_string()));
    }
    if pairs.is_empty() {
        return Err(err(path, None, "no image listed"));
    }
    Ok(ImageList::from_named(pairs))
}
