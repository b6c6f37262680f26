//! `map`: one record in, one record out (Flink's `StreamMap`). Stateless.

use super::{Data, Operator, OperatorContext, OperatorResult};
use std::marker::PhantomData;

/// Applies a function to every record.
pub struct MapOperator<I, O, F> {
    f: F,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O, F> MapOperator<I, O, F> {
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        MapOperator { f, _types: PhantomData }
    }
}

impl<I: Data, O: Data, F: FnMut(I) -> O + Send + 'static> Operator for MapOperator<I, O, F> {
    type In = I;
    type Out = O;

    fn process_batch(&mut self, _ctx: &mut OperatorContext<'_>, input: Vec<I>, out: &mut Vec<O>) -> OperatorResult {
        out.reserve(input.len());
        out.extend(input.into_iter().map(&mut self.f));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::test_support::run_batches;

    #[test]
    fn map_applies_the_function_to_every_record_in_order() {
        let cases: &[(&[i64], &[i64])] = &[(&[], &[]), (&[1], &[2]), (&[3, 1, 2], &[6, 2, 4])];
        for (input, want) in cases {
            let got = run_batches(MapOperator::new(|x: i64| x * 2), vec![input.to_vec()]);
            assert_eq!(&got, want);
        }
    }
}
