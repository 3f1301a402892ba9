//! libtorch's multi-tensor (`_foreach_*`) operations over lists of tensors (`shim/foreach.cpp`),
//! which tch does not expose. On CUDA one call updates a whole list in a few kernel launches
//! (torch.optim's default implementation and `clip_grad_norm_` use them); on the CPU libtorch
//! loops over the same per-tensor operations. They run without autograd, and a libtorch error
//! panics with its message, as tch's own methods do.

use std::os::raw::c_char;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::shim_error::ErrorText;

/// `list[i] *= scalar`.
pub(crate) fn mul_(list: &[Tensor], scalar: f64) {
    in_place(list, |p, n, e, l| unsafe {
        ffi::fk_foreach_mul_scalar_(p, n, scalar, e, l)
    });
}

/// `list[i] *= factor`, a one-element tensor on the list's device (no host round trip).
pub(crate) fn mul_by_(list: &[Tensor], factor: &Tensor) {
    in_place(list, |p, n, e, l| unsafe {
        ffi::fk_foreach_mul_tensor_(p, n, factor.as_ptr(), e, l)
    });
}

/// `list[i] += alpha * other[i]`.
pub(crate) fn add_(list: &[Tensor], other: &[Tensor], alpha: f64) {
    let other = handles(other);
    in_place(list, |p, n, e, l| unsafe {
        ffi::fk_foreach_add_list_(p, other.as_ptr(), n, alpha, e, l)
    });
}

/// `list[i] + alpha * other[i]`, new tensors.
pub(crate) fn add(list: &[Tensor], other: &[Tensor], alpha: f64) -> Vec<Tensor> {
    let other = handles(other);
    producing(list, |p, n, out, e, l| unsafe {
        ffi::fk_foreach_add_list(p, other.as_ptr(), n, alpha, out, e, l)
    })
}

/// `list[i] += scalar`.
pub(crate) fn add_scalar_(list: &[Tensor], scalar: f64) {
    in_place(list, |p, n, e, l| unsafe {
        ffi::fk_foreach_add_scalar_(p, n, scalar, e, l)
    });
}

/// `list[i] /= scalar`.
pub(crate) fn div_(list: &[Tensor], scalar: f64) {
    in_place(list, |p, n, e, l| unsafe {
        ffi::fk_foreach_div_scalar_(p, n, scalar, e, l)
    });
}

/// `list[i] += weight * (end[i] - list[i])`.
pub(crate) fn lerp_(list: &[Tensor], end: &[Tensor], weight: f64) {
    let end = handles(end);
    in_place(list, |p, n, e, l| unsafe {
        ffi::fk_foreach_lerp_scalar_(p, end.as_ptr(), n, weight, e, l)
    });
}

/// `list[i] += value * a[i] * b[i]`.
pub(crate) fn addcmul_(list: &[Tensor], a: &[Tensor], b: &[Tensor], value: f64) {
    let (a, b) = (handles(a), handles(b));
    in_place(list, |p, n, e, l| unsafe {
        ffi::fk_foreach_addcmul_(p, a.as_ptr(), b.as_ptr(), n, value, e, l)
    });
}

/// `list[i] += value * a[i] / b[i]`.
pub(crate) fn addcdiv_(list: &[Tensor], a: &[Tensor], b: &[Tensor], value: f64) {
    let (a, b) = (handles(a), handles(b));
    in_place(list, |p, n, e, l| unsafe {
        ffi::fk_foreach_addcdiv_(p, a.as_ptr(), b.as_ptr(), n, value, e, l)
    });
}

/// `sqrt(list[i])`, new tensors.
pub(crate) fn sqrt(list: &[Tensor]) -> Vec<Tensor> {
    producing(list, |p, n, out, e, l| unsafe {
        ffi::fk_foreach_sqrt(p, n, out, e, l)
    })
}

/// The L2 norm of each tensor (0-dimensional tensors).
pub(crate) fn norm(list: &[Tensor]) -> Vec<Tensor> {
    producing(list, |p, n, out, e, l| unsafe {
        ffi::fk_foreach_norm(p, n, out, e, l)
    })
}

/// `list[i] = 0`.
pub(crate) fn zero_(list: &[Tensor]) {
    in_place(list, |p, n, e, l| unsafe {
        ffi::fk_foreach_zero_(p, n, e, l)
    });
}

/// The handles of `list`, as the shim takes them.
fn handles(list: &[Tensor]) -> Vec<*mut C_tensor> {
    list.iter().map(|t| t.as_ptr().cast_mut()).collect()
}

/// Calls an in-place shim function on `list` (nothing for an empty list, which libtorch
/// refuses). The `unsafe` calls of this module's functions are sound because every list they
/// pass holds `list.len()` handles of live tensors, borrowed for the call, and the error
/// buffer is valid for its length.
fn in_place(
    list: &[Tensor],
    call: impl FnOnce(*const *mut C_tensor, usize, *mut c_char, usize) -> i32,
) {
    if list.is_empty() {
        return;
    }
    let tensors = handles(list);
    let mut error = ErrorText::new();
    let status = call(tensors.as_ptr(), tensors.len(), error.ptr(), error.len());
    check(status, &error);
}

/// Calls a shim function that writes one new tensor per element of `list`.
fn producing(
    list: &[Tensor],
    call: impl FnOnce(*const *mut C_tensor, usize, *mut *mut C_tensor, *mut c_char, usize) -> i32,
) -> Vec<Tensor> {
    if list.is_empty() {
        return Vec::new();
    }
    let tensors = handles(list);
    let mut out = vec![std::ptr::null_mut(); list.len()];
    let mut error = ErrorText::new();
    let status = call(
        tensors.as_ptr(),
        tensors.len(),
        out.as_mut_ptr(),
        error.ptr(),
        error.len(),
    );
    check(status, &error);
    out.into_iter()
        // SAFETY: on success every slot holds a new tensor handle, owned from here on.
        .map(|ptr| unsafe { Tensor::from_ptr(ptr) })
        .collect()
}

/// Panics with libtorch's message when a shim call failed.
fn check(status: i32, error: &ErrorText) {
    if status != 0 {
        panic!("{}", error.text());
    }
}

mod ffi {
    use std::os::raw::{c_char, c_int};

    use torch_sys::C_tensor;

    type List = *const *mut C_tensor;

    unsafe extern "C" {
        pub fn fk_foreach_mul_scalar_(
            list: List,
            n: usize,
            scalar: f64,
            error: *mut c_char,
            len: usize,
        ) -> c_int;
        pub fn fk_foreach_mul_tensor_(
            list: List,
            n: usize,
            factor: *const C_tensor,
            error: *mut c_char,
            len: usize,
        ) -> c_int;
        pub fn fk_foreach_add_list_(
            list: List,
            other: List,
            n: usize,
            alpha: f64,
            error: *mut c_char,
            len: usize,
        ) -> c_int;
        pub fn fk_foreach_add_list(
            list: List,
            other: List,
            n: usize,
            alpha: f64,
            out: *mut *mut C_tensor,
            error: *mut c_char,
            len: usize,
        ) -> c_int;
        pub fn fk_foreach_add_scalar_(
            list: List,
            n: usize,
            scalar: f64,
            error: *mut c_char,
            len: usize,
        ) -> c_int;
        pub fn fk_foreach_div_scalar_(
            list: List,
            n: usize,
            scalar: f64,
            error: *mut c_char,
            len: usize,
        ) -> c_int;
        pub fn fk_foreach_lerp_scalar_(
            list: List,
            end: List,
            n: usize,
            weight: f64,
            error: *mut c_char,
            len: usize,
        ) -> c_int;
        pub fn fk_foreach_addcmul_(
            list: List,
            a: List,
            b: List,
            n: usize,
            value: f64,
            error: *mut c_char,
            len: usize,
        ) -> c_int;
        pub fn fk_foreach_addcdiv_(
            list: List,
            a: List,
            b: List,
            n: usize,
            value: f64,
            error: *mut c_char,
            len: usize,
        ) -> c_int;
        pub fn fk_foreach_sqrt(
            list: List,
            n: usize,
            out: *mut *mut C_tensor,
            error: *mut c_char,
            len: usize,
        ) -> c_int;
        pub fn fk_foreach_norm(
            list: List,
            n: usize,
            out: *mut *mut C_tensor,
            error: *mut c_char,
            len: usize,
        ) -> c_int;
        pub fn fk_foreach_zero_(list: List, n: usize, error: *mut c_char, len: usize) -> c_int;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn tensors(values: &[&[f32]]) -> Vec<Tensor> {
        values.iter().map(|v| Tensor::from_slice(v)).collect()
    }

    fn values(list: &[Tensor]) -> Vec<Vec<f32>> {
        list.iter()
            .map(|t| Vec::<f32>::try_from(t.reshape([-1])).unwrap())
            .collect()
    }

    #[test]
    fn list_operations_match_their_per_tensor_forms() {
        let a = tensors(&[&[1.0, 2.0], &[4.0]]);
        let b = tensors(&[&[0.5, -1.0], &[2.0]]);
        mul_(&a, 2.0);
        assert_eq!(values(&a), [vec![2.0, 4.0], vec![8.0]]);
        add_(&a, &b, 2.0);
        assert_eq!(values(&a), [vec![3.0, 2.0], vec![12.0]]);
        let sum = add(&a, &b, -1.0);
        assert_eq!(values(&sum), [vec![2.5, 3.0], vec![10.0]]);
        assert_eq!(
            values(&a),
            [vec![3.0, 2.0], vec![12.0]],
            "add leaves its inputs"
        );
        add_scalar_(&a, 1.0);
        div_(&a, 2.0);
        assert_eq!(values(&a), [vec![2.0, 1.5], vec![6.5]]);
        lerp_(&a, &b, 0.5);
        assert_eq!(values(&a), [vec![1.25, 0.25], vec![4.25]]);
        addcmul_(&a, &b, &b, 4.0);
        assert_eq!(values(&a), [vec![2.25, 4.25], vec![20.25]]);
        let roots = sqrt(&a);
        assert_eq!(values(&roots), [vec![1.5, 4.25f32.sqrt()], vec![4.5]]);
        addcdiv_(&a, &b, &roots, 3.0);
        assert_eq!(
            values(&a)[0],
            vec![2.25 + 3.0 * 0.5 / 1.5, 4.25 - 3.0 / 4.25f32.sqrt()]
        );
        let norms = norm(&tensors(&[&[3.0, 4.0], &[-2.0]]));
        assert_eq!(values(&norms), [vec![5.0], vec![2.0]]);
        mul_by_(&b, &Tensor::from(0.5f32));
        assert_eq!(values(&b), [vec![0.25, -0.5], vec![1.0]]);
        zero_(&b);
        assert_eq!(values(&b), [vec![0.0, 0.0], vec![0.0]]);
        // Empty lists are no-ops, not libtorch errors.
        mul_(&[], 2.0);
        assert!(norm(&[]).is_empty());
    }

    #[test]
    fn parameters_that_require_grad_are_updated_without_autograd() {
        let p = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let list = [p.shallow_clone()];
        mul_(&list, 3.0);
        assert_eq!(Vec::<f32>::try_from(&p.detach()).unwrap(), [3.0, 6.0]);
        assert_eq!(p.kind(), Kind::Float);
    }

    #[test]
    #[should_panic(expected = "must match")]
    fn a_libtorch_error_panics_with_its_message() {
        add_(&tensors(&[&[1.0, 2.0]]), &tensors(&[&[1.0, 2.0, 3.0]]), 1.0);
    }
}
