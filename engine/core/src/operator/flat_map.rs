//! `flat_map`: each record becomes zero or more records (Flink's `StreamFlatMap`). Stateless.

use super::{Data, Operator, OperatorContext, OperatorResult};
use std::marker::PhantomData;

/// Calls `f(record, out)` for every record; `f` appends any number of outputs.
pub struct FlatMapOperator<I, O, F> {
    f: F,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O, F> FlatMapOperator<I, O, F> {
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        FlatMapOperator { f, _types: PhantomData }
    }
}

impl<I: Data, O: Data, F: FnMut(I, &mut Vec<O>) + Send + 'static> Operator for FlatMapOperator<I, O, F> {
    type In = I;
    type Out = O;

    fn process_batch(&mut self, _ctx: &mut OperatorContext<'_>, input: Vec<I>, out: &mut Vec<O>) -> OperatorResult {
        for record in input {
            (self.f)(record, out);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::test_support::run_batches;

    #[test]
    fn flat_map_emits_every_output_of_every_record_in_order() {
        let split = |line: String, out: &mut Vec<String>| out.extend(line.split(' ').filter(|w| !w.is_empty()).map(str::to_owned));
        let cases: &[(&[&str], &[&str])] = &[(&[], &[]), (&["a b", "", "c"], &["a", "b", "c"]), (&["  x  y "], &["x", "y"])];
        for (input, want) in cases {
            let input: Vec<String> = input.iter().map(|s| s.to_string()).collect();
            let got = run_batches(FlatMapOperator::new(split), vec![input]);
            assert_eq!(got, want.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
    }
}
