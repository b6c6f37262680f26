//! `filter`: keeps the records a predicate accepts (Flink's `StreamFilter`). Stateless.

use super::{Data, Operator, OperatorContext, OperatorResult};
use std::marker::PhantomData;

/// Keeps the records for which the predicate is true.
pub struct FilterOperator<T, F> {
    predicate: F,
    _types: PhantomData<fn(T)>,
}

impl<T, F> FilterOperator<T, F> {
    /// Wraps `predicate`.
    pub fn new(predicate: F) -> Self {
        FilterOperator { predicate, _types: PhantomData }
    }
}

impl<T: Data, F: FnMut(&T) -> bool + Send + 'static> Operator for FilterOperator<T, F> {
    type In = T;
    type Out = T;

    fn process_batch(&mut self, _ctx: &mut OperatorContext<'_>, input: Vec<T>, out: &mut Vec<T>) -> OperatorResult {
        out.extend(input.into_iter().filter(|r| (self.predicate)(r)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::test_support::run_batches;

    #[test]
    fn filter_keeps_matching_records_in_order() {
        let cases: &[(&[i32], &[i32])] = &[(&[], &[]), (&[1, 2, 3, 4], &[2, 4]), (&[1, 3], &[])];
        for (input, want) in cases {
            let got = run_batches(FilterOperator::new(|x: &i32| x % 2 == 0), vec![input.to_vec()]);
            assert_eq!(&got, want);
        }
    }
}
