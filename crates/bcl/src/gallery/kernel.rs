//! The float32 inner product the HNSW index scores with: one kernel per CPU family
//! (AVX-512F, AVX2 with FMA, and a portable one), chosen once at run time and handed to usearch
//! as its metric (`Index::change_metric`). usearch's own float32 kernels (NumKong's) sum in
//! float64 on every CPU, which costs the graph search about half its speed; these sum in
//! float32 with several accumulators, as faiss and the project's exact search do.

use std::fmt;

/// Which kernel runs the inner products on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// 16 floats per instruction, four accumulators, a masked tail.
    Avx512,
    /// 8 floats per fused multiply-add, four accumulators, a scalar tail.
    Avx2Fma,
    /// Portable Rust (eight independent sums the compiler vectorises).
    Portable,
}

impl Kernel {
    /// The widest kernel this CPU runs (`BCL_KERNEL=portable|avx2|avx512` narrows it, for
    /// measurements; a kernel the CPU lacks is never chosen).
    pub fn detect() -> Self {
        Self::for_index().unwrap_or_else(Self::widest)
    }

    /// The kernel a float32 index is given: [`Kernel::detect`], or none (usearch's own
    /// float64-summing kernel) when `BCL_KERNEL=usearch`, for measuring one against the other
    /// in the same build.
    pub fn for_index() -> Option<Self> {
        match std::env::var("BCL_KERNEL").as_deref() {
            Ok("usearch") => None,
            Ok("portable") => Some(Kernel::Portable),
            Ok("avx2") if Kernel::Avx2Fma.runs_here() => Some(Kernel::Avx2Fma),
            _ => Some(Self::widest()),
        }
    }

    /// The name of what scores a float32 index on this CPU: a kernel's name, or "usearch".
    pub fn index_kernel_name() -> String {
        Self::for_index().map_or_else(|| "usearch".to_string(), |k| k.to_string())
    }

    fn widest() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Kernel::Avx2Fma;
            }
        }
        Kernel::Portable
    }

    /// Whether this CPU runs the kernel.
    pub fn runs_here(self) -> bool {
        match self {
            Kernel::Portable => true,
            Kernel::Avx2Fma => Self::widest() != Kernel::Portable,
            Kernel::Avx512 => Self::widest() == Kernel::Avx512,
        }
    }

    /// Every kernel this CPU can run (for tests that check each one).
    pub fn available() -> Vec<Self> {
        [Kernel::Portable, Kernel::Avx2Fma, Kernel::Avx512]
            .into_iter()
            .filter(|k| k.runs_here())
            .collect()
    }

    /// `<a, b>` over the first `n` floats of each.
    ///
    /// # Safety
    /// `a` and `b` point to at least `n` readable floats, and the kernel
    /// [`Kernel::runs_here`].
    #[inline(always)]
    pub unsafe fn dot_ptr(self, a: *const f32, b: *const f32, n: usize) -> f32 {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { x86::dot_avx512(a, b, n) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => unsafe { x86::dot_avx2(a, b, n) },
            _ => unsafe { dot_portable(a, b, n) },
        }
    }

    /// `<q, v>` for four vectors at once (the graph search scores a node's neighbours four at
    /// a time, as faiss does: the query's loads are shared and the four sums run side by side).
    ///
    /// # Safety
    /// `q` and each of `v` point to at least `n` readable floats, and the kernel
    /// [`Kernel::runs_here`].
    #[inline(always)]
    pub unsafe fn dot4_ptr(self, q: *const f32, v: [*const f32; 4], n: usize) -> [f32; 4] {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { x86::dot4_avx512(q, v, n) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => unsafe { x86::dot4_avx2(q, v, n) },
            _ => v.map(|p| unsafe { dot_portable(q, p, n) }),
        }
    }

    /// `<a, b>` (the shorter length of the two).
    pub fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: both slices hold `n` floats; a kernel this CPU lacks falls back to the
        // portable one.
        let k = if self.runs_here() {
            self
        } else {
            Kernel::Portable
        };
        unsafe { k.dot_ptr(a.as_ptr(), b.as_ptr(), n) }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kernel::Avx512 => "avx512f",
            Kernel::Avx2Fma => "avx2+fma",
            Kernel::Portable => "portable",
        })
    }
}

/// Eight running sums, so that the compiler keeps them in one vector register.
///
/// # Safety
/// `a` and `b` point to at least `n` readable floats.
#[inline(always)]
unsafe fn dot_portable(a: *const f32, b: *const f32, n: usize) -> f32 {
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, n),
            std::slice::from_raw_parts(b, n),
        )
    };
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Four 16-float accumulators over 64-float steps, then 16-float steps, then one masked
    /// load for the last `n % 16`.
    ///
    /// # Safety
    /// AVX-512F is present; `a` and `b` point to at least `n` readable floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_avx512(a: *const f32, b: *const f32, n: usize) -> f32 {
        unsafe {
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut i = 0;
            while i + 64 <= n {
                for (j, s) in acc.iter_mut().enumerate() {
                    let o = i + 16 * j;
                    *s = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(o)), _mm512_loadu_ps(b.add(o)), *s);
                }
                i += 64;
            }
            while i + 16 <= n {
                acc[0] =
                    _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), acc[0]);
                i += 16;
            }
            if i < n {
                let m: __mmask16 = (1u32 << (n - i)) as u16 - 1;
                let x = _mm512_maskz_loadu_ps(m, a.add(i));
                let y = _mm512_maskz_loadu_ps(m, b.add(i));
                acc[1] = _mm512_fmadd_ps(x, y, acc[1]);
            }
            let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
            _mm512_reduce_add_ps(s)
        }
    }

    /// One query against four vectors: one 16-float accumulator per vector, the query's
    /// 16 floats loaded once per step, the last `n % 16` through one masked load.
    ///
    /// # Safety
    /// AVX-512F is present; `q` and each of `v` point to at least `n` readable floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot4_avx512(q: *const f32, v: [*const f32; 4], n: usize) -> [f32; 4] {
        unsafe {
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut i = 0;
            while i + 16 <= n {
                let x = _mm512_loadu_ps(q.add(i));
                for (s, p) in acc.iter_mut().zip(v) {
                    *s = _mm512_fmadd_ps(x, _mm512_loadu_ps(p.add(i)), *s);
                }
                i += 16;
            }
            if i < n {
                let m: __mmask16 = (1u32 << (n - i)) as u16 - 1;
                let x = _mm512_maskz_loadu_ps(m, q.add(i));
                for (s, p) in acc.iter_mut().zip(v) {
                    *s = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, p.add(i)), *s);
                }
            }
            // no closure here: it would not inherit this function's target feature
            [
                _mm512_reduce_add_ps(acc[0]),
                _mm512_reduce_add_ps(acc[1]),
                _mm512_reduce_add_ps(acc[2]),
                _mm512_reduce_add_ps(acc[3]),
            ]
        }
    }

    /// One query against four vectors: one 8-float accumulator per vector, the query's 8
    /// floats loaded once per step, the last `n % 8` one at a time.
    ///
    /// # Safety
    /// AVX2 and FMA are present; `q` and each of `v` point to at least `n` readable floats.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4_avx2(q: *const f32, v: [*const f32; 4], n: usize) -> [f32; 4] {
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 8 <= n {
                let x = _mm256_loadu_ps(q.add(i));
                for (s, p) in acc.iter_mut().zip(v) {
                    *s = _mm256_fmadd_ps(x, _mm256_loadu_ps(p.add(i)), *s);
                }
                i += 8;
            }
            // the four horizontal sums at once: pairwise adds leave lane j holding vector j's
            let a01 = _mm256_hadd_ps(acc[0], acc[1]);
            let a23 = _mm256_hadd_ps(acc[2], acc[3]);
            let a = _mm256_hadd_ps(a01, a23);
            let h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            let mut out = [0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), h);
            while i < n {
                let x = *q.add(i);
                for (o, p) in out.iter_mut().zip(v) {
                    *o += x * *p.add(i);
                }
                i += 1;
            }
            out
        }
    }

    /// Four 8-float accumulators over 32-float steps, then 8-float steps, then the last
    /// `n % 8` one at a time.
    ///
    /// # Safety
    /// AVX2 and FMA are present; `a` and `b` point to at least `n` readable floats.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: *const f32, b: *const f32, n: usize) -> f32 {
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                for (j, s) in acc.iter_mut().enumerate() {
                    let o = i + 8 * j;
                    *s = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(o)), _mm256_loadu_ps(b.add(o)), *s);
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] =
                    _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc[0]);
                i += 8;
            }
            let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            // horizontal sum of the eight lanes
            let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_movehdup_ps(h));
            let mut total = _mm_cvtss_f32(h);
            while i < n {
                total += *a.add(i) * *b.add(i);
                i += 1;
            }
            total
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f64_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    #[test]
    fn every_kernel_matches_a_float64_sum_at_every_length_around_its_steps() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let lengths: Vec<usize> = (0..=140)
            .chain([255, 256, 257, 511, 512, 1000, 1024])
            .collect();
        for &n in &lengths {
            // offsets by one float: unaligned loads everywhere
            let a: Vec<f32> = (0..n + 1).map(|_| next()).collect();
            let b: Vec<f32> = (0..n + 1).map(|_| next()).collect();
            let (a, b) = (&a[1..], &b[1..]);
            let want = f64_dot(a, b);
            for k in Kernel::available() {
                let got = k.dot(a, b) as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + n as f64).sqrt(),
                    "{k} at n = {n}: {got} against {want}"
                );
                // four at once: b, a, b, a against the query a
                let v = [b.as_ptr(), a.as_ptr(), b.as_ptr(), a.as_ptr()];
                // SAFETY: a and b hold n floats; the kernel runs here
                let got4 = unsafe { k.dot4_ptr(a.as_ptr(), v, n) };
                let self_dot = f64_dot(a, a);
                for (j, (&g, w)) in got4
                    .iter()
                    .zip([want, self_dot, want, self_dot])
                    .enumerate()
                {
                    assert!(
                        (g as f64 - w).abs() <= 1e-5 * (1.0 + n as f64).sqrt(),
                        "{k} four at once, vector {j}, n = {n}: {g} against {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_kernel_reads_no_float_past_the_length() {
        // the float after the end is NaN: reading it would poison the sum
        for n in 0..40 {
            let mut a: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let mut b = vec![1.0f32; n];
            a.push(f32::NAN);
            b.push(f32::NAN);
            for k in Kernel::available() {
                let got = k.dot(&a[..n], &b[..n]);
                assert_eq!(got, (n * n.saturating_sub(1) / 2) as f32, "{k} at n = {n}");
                // SAFETY: both hold n + 1 floats; the kernel runs here
                let got4 = unsafe { k.dot4_ptr(b.as_ptr(), [a.as_ptr(); 4], n) };
                assert_eq!(got4, [got; 4], "{k} four at once at n = {n}");
            }
        }
    }

    #[test]
    fn the_detected_kernel_is_one_this_cpu_runs() {
        assert!(Kernel::available().contains(&Kernel::detect()));
    }
}
