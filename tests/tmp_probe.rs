use threatflow::detect::sigma::{self, Placeholders, RecordView};
use threatflow::detect::sigma_set::SigmaSet;
#[test]
fn probe() {
    let rules = sigma::read_dir(std::path::Path::new("rules/sigma"), &Placeholders::new()).unwrap().0;
    let set = SigmaSet::new(rules.clone());
    let of = set.for_source("aws.cloudtrail");
    println!("{}", of.describe());
    let text = std::fs::read_to_string("target/benchmarks/raw-records/aws.cloudtrail-300000.jsonl").unwrap();
    let mut total = 0usize; let mut n = 0; let mut matched = 0;
    for line in text.lines().take(20000) {
        let record: sonic_rs::Value = sonic_rs::from_str(line).unwrap();
        let view = RecordView::new(&record);
        total += of.candidates(&view); n += 1;
        matched += set.matched(&of, &view).len();
    }
    println!("avg candidates {} matched {}", total as f64 / n as f64, matched as f64 / n as f64);
}
