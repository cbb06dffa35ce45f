//! The status page `bcl serve` answers at `/`: one self-contained HTML document (style and
//! script inline, nothing fetched from elsewhere) that reads the same JSON endpoints a script
//! would (`GET /stats`, `GET /health`, `POST /search`) and adds no write action. With a token,
//! a browser signs in once through `/?token=...`, which sets a same-site, script-invisible
//! cookie and redirects to the bare address (browsers cannot add an `Authorization` header to
//! a page they navigate to). Where the gallery was built from a data set, the page shows each
//! hit's image, read from that data set (`GET /item/<id>/image`, PNG).

use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::auth::Token;
use crate::data::Dataset;
use crate::gallery::DataSource;

/// The gallery's data set, loaded once, and each item id's position in it.
pub(super) struct Thumbnails {
    data: Dataset,
    position: std::collections::HashMap<u64, usize>,
}

impl Thumbnails {
    /// Reads the data set the gallery records as its source.
    pub(super) fn load(src: &DataSource) -> Result<Self, crate::data::DataError> {
        let data = crate::gallery::ops::load_source(src)?;
        let position = data
            .ids
            .iter()
            .enumerate()
            .map(|(p, &id)| (id as u64, p))
            .collect();
        Ok(Self { data, position })
    }

    /// Item `id`'s image as PNG (404 for an id the data set does not hold).
    pub(super) fn png(&self, id: u64) -> Response {
        let Some(&p) = self.position.get(&id) else {
            return super::error(
                StatusCode::NOT_FOUND,
                format!("no item {id} in the gallery's data set"),
            );
        };
        let d = &self.data;
        let n = d.item_size();
        let pixels = d.pixels[p * n..(p + 1) * n].to_vec();
        let (w, h) = (d.cols as u32, d.rows as u32);
        let img = match d.channels {
            1 => image::GrayImage::from_raw(w, h, pixels).map(image::DynamicImage::ImageLuma8),
            3 => rgb_from_planes(&pixels, w, h).map(image::DynamicImage::ImageRgb8),
            _ => None,
        };
        let Some(img) = img else {
            return super::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("items of {} channels have no image form", d.channels),
            );
        };
        let mut png = Vec::new();
        if let Err(e) = img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png) {
            return super::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
        let mut r = ([(header::CONTENT_TYPE, "image/png")], png).into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

/// Channel-major pixels (`C × H × W`, as the data sets hold them) as an RGB image.
fn rgb_from_planes(p: &[u8], w: u32, h: u32) -> Option<image::RgbImage> {
    let plane = (w * h) as usize;
    let mut out = Vec::with_capacity(3 * plane);
    for i in 0..plane {
        out.extend([p[i], p[plane + i], p[2 * plane + i]]);
    }
    image::RgbImage::from_raw(w, h, out)
}

/// The cookie a signed-in browser carries the token in.
pub const COOKIE: &str = "bcl_token";

/// The token a `Cookie` header carries, if any. (Cookie headers are `name=value` pairs
/// separated by `;`: parsed here rather than through another dependency.)
pub(super) fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// The `token` parameter of the page's address, if the request is for the page.
pub(super) fn query_token(uri: &Uri) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Q {
        token: Option<String>,
    }
    if uri.path() != "/" {
        return None;
    }
    axum::extract::Query::<Q>::try_from_uri(uri)
        .ok()
        .and_then(|q| q.0.token)
}

/// The sign-in answer to `/?token=T` with the right token: the cookie, and a redirect to the
/// page's address without the token in it.
pub(super) fn sign_in(token: &Token, given: &str) -> Option<Response> {
    if !token.admits_value(given) {
        return None;
    }
    let cookie = format!("{COOKIE}={given}; Path=/; HttpOnly; SameSite=Strict");
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // a token is visible ASCII (Token::new), so it is a valid header value
    h.insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).ok()?);
    Some(r)
}

/// The page, with headers that keep it from loading anything from elsewhere.
pub(super) fn page() -> Response {
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The page's document.
pub const PAGE: &str = r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>bcl gallery</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#111;background:#fafafa}
header{padding:.8em 1.2em;background:#fff;border-bottom:1px solid #ddd}
h1{margin:0;font-size:1.4em}main{padding:0 1.2em 2em;max-width:1000px}
section{margin-top:1.2em}h2{font-size:1.1em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;white-space:nowrap}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
.muted{color:#666}.error{color:#a3261b}.ok{color:#176b2c}
progress{width:100%;max-width:30em;height:1.2em}
textarea{width:100%;max-width:40em;height:4em;font:13px monospace}
svg{max-width:100%;height:auto;background:#fff;border:1px solid #eee}
img.thumb{image-rendering:pixelated;border:1px solid #ddd;background:#fff}
form>*{margin:.3em .6em .3em 0}
</style></head>
<body>
<header><h1>bcl gallery</h1><p id="summary" class="muted">loading…</p><p id="problem" class="error" hidden></p></header>
<main>
<section id="models"><h2>Models</h2><div id="models-body" class="muted">…</div></section>
<section id="lineage"><h2>Lineage</h2><p id="lineage-now"></p><div id="lineage-graph"></div><ul id="lineage-edges"></ul></section>
<section id="backfill"><h2>Backfill</h2><div id="backfill-body" class="muted">no backfill in this server</div></section>
<section id="measurement"><h2>Last recall measurement</h2><div id="measurement-body" class="muted">none recorded on this gallery (<code>bcl gallery link --model</code> measures one)</div></section>
<section id="search"><h2>Search</h2>
<form id="search-form">
<label>query vector (numbers separated by commas or spaces)<br><textarea id="q-vector"></textarea></label><br>
<label>or an image <input id="q-image" type="file" accept="image/png,image/jpeg"></label>
<label>k <input id="q-k" type="number" min="1" value="10" style="width:5em"></label>
<label><input id="q-exact" type="checkbox"> exact</label>
<button type="submit">search</button>
</form>
<p id="search-status" class="muted"></p>
<div id="search-results"></div>
</section>
<section id="server"><h2>Server</h2><div id="server-body" class="muted">…</div></section>
</main>
<script>
(function(){
'use strict';
function $(id){return document.getElementById(id);}
function el(tag,attrs,kids){var e=document.createElement(tag);
 if(attrs)Object.keys(attrs).forEach(function(k){if(k==='text')e.textContent=attrs[k];else e.setAttribute(k,attrs[k]);});
 (kids||[]).forEach(function(c){e.appendChild(typeof c==='string'?document.createTextNode(c):c);});return e;}
function table(head,rows){var t=el('table',null,[el('thead',null,[el('tr',null,head.map(function(h){return el('th',{text:h});}))])]);
 var b=el('tbody');rows.forEach(function(r){b.appendChild(el('tr',null,r.map(function(c){return el('td',{text:String(c)});})));});
 t.appendChild(b);return t;}
function fill(id,node){var d=$(id);d.textContent='';d.className='';d.appendChild(node);}
function num(x,d){return (typeof x==='number')?x.toFixed(d):'–';}
function secs(s){if(s==null)return '–';s=Math.round(s);if(s<60)return s+' s';if(s<3600)return Math.floor(s/60)+' min '+(s%60)+' s';
 return Math.floor(s/3600)+' h '+Math.floor(s%3600/60)+' min';}
function problem(text){var p=$('problem');if(text){p.textContent=text;p.hidden=false;}else{p.hidden=true;}}
function getJSON(path){return fetch(path,{credentials:'same-origin',cache:'no-store'}).then(function(r){
 return r.json().catch(function(){return {error:'not JSON (HTTP '+r.status+')'};}).then(function(j){if(!r.ok)throw new Error(j.error||('HTTP '+r.status));return j;});});}
var names={},thumbs=false;
function render(s){
 problem('');thumbs=!!s.thumbnails;
 (s.models||[]).forEach(function(m){names[m.id]=m.name;});
 $('summary').textContent=s.items+' items of dimension '+s.dim+' in a '+s.backend+' gallery; query model: '+
  (s.query_model?s.query_model.name:'none (vectors only)')+(s.adapter?' through adapter '+s.adapter.kind+' '+s.adapter.id:'')+'; auth: '+s.auth;
 var per=s.items_per_model||{};
 fill('models-body',table(['model','id','method','dim','items','share'],(s.models||[]).map(function(m){var n=per[m.id]||0;
  return [m.name+(s.query_model&&s.query_model.id===m.id?' (query model)':''),m.id.slice(0,12),m.method,m.dim,n,s.items?num(100*n/s.items,1)+'%':'–'];})));
 $('lineage-now').textContent='the query model on this gallery now: '+(s.lineage||'no query model');
 var edges=s.graph||[];var ul=$('lineage-edges');ul.textContent='';
 edges.forEach(function(e){var m=e.measured?' — cross-test mAP '+num(e.measured.map,4)+', Recall@1 '+num(e.measured.recall_at_1,4)+' on '+e.measured.items+' items':' — not measured';
  ul.appendChild(el('li',{'class':'edge'},[e.from_name+' → '+e.to_name+' ('+e.kind+(e.adapter?' '+e.adapter[0]+' '+e.adapter[1].slice(0,12):'')+')'+m]));});
 if(!edges.length)ul.appendChild(el('li',{'class':'muted',text:'no lineage edges: no model declares compatibility with another, no adapter recorded'}));
 drawGraph(s.models||[],edges,per);
 var b=s.backfill;
 if(b){var box=el('div');var pr=el('progress',{max:String(Math.max(b.todo,1)),value:String(b.done)});
  box.appendChild(pr);
  box.appendChild(el('p',{id:'backfill-text',text:(b.running?'running: ':(b.error?'stopped: ':'finished: '))+b.done+' of '+b.todo+' items re-embedded with '+(names[b.model]||b.model)+
   ' (target share '+num(100*b.target_fraction,0)+'%); '+(b.rate_per_s!=null?num(b.rate_per_s,1)+' items/s':'rate –')+
   ', elapsed '+secs(b.elapsed_s)+(b.running?', ETA '+secs(b.eta_s):'')}));
  if(b.error)box.appendChild(el('p',{'class':'error',text:b.error}));
  fill('backfill-body',box);}
 var t=s.last_measurement;
 if(t){fill('measurement-body',table(['query model','adapter','mAP','Recall@1','items','when'],
  [[names[t.query]||t.query,t.adapter?t.adapter.slice(0,12):'–',num(t.map,4),num(t.recall_at_1,4),t.items,new Date(t.unix_s*1000).toISOString().replace('T',' ').slice(0,19)+' UTC']]));}
 var l=s.limits||{};
 fill('server-body',table(['setting','value'],Object.keys(l).map(function(k){return [k,l[k]];}).concat([
  ['requests',s.requests],['client errors',s.client_errors],['server errors',s.server_errors],['searches',s.searches],['mean search ms',num(s.mean_search_ms,3)]])));
 return s;}
function drawGraph(models,edges,per){
 var g=$('lineage-graph');g.textContent='';if(!models.length)return;
 var ns='http://www.w3.org/2000/svg',w=170,h=56,gap=60,W=Math.max(560,models.length*(w+gap)+gap),H=edges.length?h+140:h+50;
 function s(tag,a,text){var e=document.createElementNS(ns,tag);Object.keys(a).forEach(function(k){e.setAttribute(k,a[k]);});if(text!=null)e.textContent=text;return e;}
 var svg=s('svg',{viewBox:'0 0 '+W+' '+H,width:String(W),height:String(H),role:'img','aria-label':'lineage graph'});
 var defs=s('defs',{});var mk=s('marker',{id:'arrow',viewBox:'0 0 10 10',refX:'9',refY:'5',markerWidth:'7',markerHeight:'7',orient:'auto-start-reverse'});
 mk.appendChild(s('path',{d:'M0,0 L10,5 L0,10 z',fill:'#555'}));defs.appendChild(mk);svg.appendChild(defs);
 var x={};models.forEach(function(m,i){x[m.id]=gap+i*(w+gap);});
 edges.forEach(function(e,i){if(x[e.from]==null||x[e.to]==null)return;var a=x[e.from]+w/2,b=x[e.to]+w/2,y=h+100,top=h+40+Math.min(50,12*(i+1));
  var d=a===b?'M'+(a-20)+','+(h+100)+' C'+(a-60)+','+(H-5)+' '+(a+60)+','+(H-5)+' '+(a+20)+','+(h+100):'M'+a+','+y+' C'+a+','+(H-5-i*6)+' '+b+','+(H-5-i*6)+' '+b+','+(y+2);
  svg.appendChild(s('path',{d:d,fill:'none',stroke:e.kind==='declared'?'#2b6cb0':(e.kind==='forward'?'#b7791f':'#2f855a'),'stroke-width':'2','marker-end':'url(#arrow)'}));
  svg.appendChild(s('text',{x:String((a+b)/2),y:String(H-8-i*6),'text-anchor':'middle','font-size':'12',fill:'#333'},e.kind+(e.measured?' '+num(e.measured.map,3):'')));});
 models.forEach(function(m){var g2=s('g',{});g2.appendChild(s('rect',{x:String(x[m.id]),y:'40',width:String(w),height:String(h),rx:'8',fill:'#eef4fb',stroke:'#2b6cb0'}));
  g2.appendChild(s('text',{x:String(x[m.id]+w/2),y:'62','text-anchor':'middle','font-size':'14'},m.name));
  g2.appendChild(s('text',{x:String(x[m.id]+w/2),y:'82','text-anchor':'middle','font-size':'12',fill:'#555'},(per[m.id]||0)+' items'));svg.appendChild(g2);});
 svg.insertBefore(s('text',{x:'10',y:'20','font-size':'12',fill:'#555'},'models in order of arrival; arrows: queries (or stored vectors) of one model reach the other\u2019s space'),svg.firstChild.nextSibling);
 g.appendChild(svg);}
function refresh(){return getJSON('/stats').then(render).catch(function(e){problem('cannot read /stats: '+e.message);});}
function showHits(r){var rows=[],hits=(r.results&&r.results[0])||[];hits.forEach(function(hit,i){rows.push([i+1,hit.id,num(hit.score,4)]);});
 var t=table(['rank','item id','score'].concat(thumbs?['image']:[]),rows);
 if(thumbs)Array.prototype.forEach.call(t.tBodies[0].rows,function(tr,i){var td=el('td');
  td.appendChild(el('img',{src:'/item/'+hits[i].id+'/image',alt:'item '+hits[i].id,width:'48',height:'48','class':'thumb'}));tr.appendChild(td);});
 fill('search-results',t);
 $('search-status').textContent=rows.length+' hits ('+(r.exact?'exact':'approximate')+' search, k = '+r.k+(r.model?', query model '+(names[r.model]||r.model):'')+')';$('search-status').className='ok';}
function search(ev){if(ev)ev.preventDefault();
 var k=parseInt($('q-k').value,10)||10,exact=$('q-exact').checked,file=$('q-image').files&&$('q-image').files[0],req;
 if(file){req=fetch('/search?k='+k+'&exact='+exact,{method:'POST',credentials:'same-origin',headers:{'Content-Type':file.type||'image/png'},body:file});}
 else{var v=$('q-vector').value.split(/[\s,]+/).filter(function(x){return x.length;}).map(Number);
  if(!v.length||v.some(function(x){return !isFinite(x);})){$('search-status').textContent='give a vector of numbers, or choose an image';$('search-status').className='error';return;}
  req=fetch('/search',{method:'POST',credentials:'same-origin',headers:{'Content-Type':'application/json'},body:JSON.stringify({vector:v,k:k,exact:exact})});}
 $('search-status').textContent='searching…';$('search-status').className='muted';
 req.then(function(r){return r.json().then(function(j){if(!r.ok)throw new Error(j.error||('HTTP '+r.status));return j;});})
  .then(showHits).catch(function(e){$('search-status').textContent='refused: '+e.message;$('search-status').className='error';$('search-results').textContent='';});}
$('search-form').addEventListener('submit',search);
// a query in the address (#vector=0.1,0.2&k=5&exact=1) is filled in and run once the page has
// read /stats: a link to a search
var hash=new URLSearchParams(location.hash.slice(1));
refresh().then(function(){if(hash.has('vector')){$('q-vector').value=hash.get('vector');
 if(hash.has('k'))$('q-k').value=hash.get('k');$('q-exact').checked=hash.get('exact')==='1';search();}});
setInterval(refresh,2000);
})();
</script>
</body></html>
"##;
