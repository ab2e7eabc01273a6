//! Where an event happened on the globe, for the speed of travel between a user's logins
//! (the `travel_speed_kmh` feature): the coordinates a city database gives its address, or else
//! the centre of its country.
//!
//! A [`Place`] is rounded to 0.01° (about a kilometre; IP geolocation is rarely better) and
//! packed into 32 bits, so that it can be a value of the feature arrangement and compare exactly
//! on every worker. Distances are great-circle distances on a sphere of the Earth's mean radius.
//!
//! ```
//! use threatflow::enrich::place::Place;
//! let paris = Place::from_degrees(48.86, 2.35).unwrap();
//! let new_york = Place::from_degrees(40.71, -74.01).unwrap();
//! assert_eq!(paris.distance_km(new_york).round(), 5837.0);
//! // Paris to New York in one hour: faster than any aircraft.
//! assert_eq!(Place::speed_kmh(paris, new_york, 3_600_000), 5837);
//! assert_eq!(Place::of_country("fr"), Place::from_degrees(46.0, 2.0));
//! ```

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::event::{Event, Time};

/// A point on the globe rounded to 0.01°: latitude and longitude in hundredths of a degree,
/// offset to be non-negative and packed as `latitude << 16 | longitude`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Place(u32);

/// The Earth's mean radius (IUGG), in kilometres.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Milliseconds in an hour.
const HOUR_MS: f64 = 3_600_000.0;

impl Place {
    /// The packed form (for compact encodings): [`Place::from_packed`] gives the place back.
    ///
    /// ```
    /// use threatflow::enrich::place::Place;
    /// let place = Place::from_degrees(48.86, 2.35).unwrap();
    /// assert_eq!(Place::from_packed(place.packed()), place);
    /// ```
    pub fn packed(self) -> u32 {
        self.0
    }

    /// The place of a packed form.
    pub fn from_packed(packed: u32) -> Place {
        Place(packed)
    }

    /// The place at these coordinates (degrees), rounded to 0.01°; `None` when they are not on
    /// the globe (out of range or not finite).
    pub fn from_degrees(latitude: f64, longitude: f64) -> Option<Place> {
        if !(-90.0..=90.0).contains(&latitude) || !(-180.0..=180.0).contains(&longitude) {
            return None;
        }
        let lat = (latitude * 100.0).round() as i32 + 9_000;
        let lon = (longitude * 100.0).round() as i32 + 18_000;
        Some(Place(((lat as u32) << 16) | lon as u32))
    }

    /// The place's latitude and longitude, in degrees (as rounded).
    pub fn degrees(self) -> (f64, f64) {
        let lat = (self.0 >> 16) as i32 - 9_000;
        let lon = (self.0 & 0xffff) as i32 - 18_000;
        (f64::from(lat) / 100.0, f64::from(lon) / 100.0)
    }

    /// The centre of a country (ISO 3166-1 alpha-2 code, any case), from the table in
    /// `src/enrich/data/country-centers.csv`.
    pub fn of_country(code: &str) -> Option<Place> {
        let key: [u8; 2] = code.as_bytes().try_into().ok()?;
        COUNTRY_CENTERS.get(&key.map(|b| b.to_ascii_uppercase())).copied()
    }

    /// Where an event happened: the coordinates its enrichment gives (a city database), or else
    /// the centre of its country; `None` when it has neither.
    pub fn of(event: &Event) -> Option<Place> {
        let coordinates = event.enrichment.as_ref().and_then(|e| Some((e.latitude?, e.longitude?)));
        coordinates
            .and_then(|(lat, lon)| Place::from_degrees(lat.0, lon.0))
            .or_else(|| event.country.as_deref().and_then(Place::of_country))
    }

    /// The great-circle distance to another place, in kilometres (haversine formula).
    pub fn distance_km(self, other: Place) -> f64 {
        let (lat1, lon1) = self.degrees();
        let (lat2, lon2) = other.degrees();
        let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
        let half_dphi = (phi2 - phi1) / 2.0;
        let half_dlambda = (lon2 - lon1).to_radians() / 2.0;
        let h = half_dphi.sin().powi(2) + phi1.cos() * phi2.cos() * half_dlambda.sin().powi(2);
        2.0 * EARTH_RADIUS_KM * h.min(1.0).sqrt().asin()
    }

    /// The speed (km/h, rounded down) of going from `from` to `to` in `elapsed` milliseconds
    /// (at least one).
    pub fn speed_kmh(from: Place, to: Place, elapsed: Time) -> u64 {
        let hours = elapsed.max(1) as f64 / HOUR_MS;
        (from.distance_km(to) / hours).floor() as u64
    }
}

/// The country centres, read once from the embedded table.
static COUNTRY_CENTERS: LazyLock<HashMap<[u8; 2], Place>> = LazyLock::new(|| {
    include_str!("data/country-centers.csv")
        .lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with("code,"))
        .filter_map(|line| {
            let mut fields = line.split(',');
            let code: [u8; 2] = fields.next()?.as_bytes().try_into().ok()?;
            let latitude = fields.next()?.parse().ok()?;
            let longitude = fields.next()?.parse().ok()?;
            Some((code, Place::from_degrees(latitude, longitude)?))
        })
        .collect()
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_of_the_table_is_read() {
        let rows = include_str!("data/country-centers.csv").lines().filter(|l| !l.starts_with('#')).count() - 1;
        assert_eq!(COUNTRY_CENTERS.len(), rows);
        assert_eq!(rows, 250);
    }

    #[test]
    fn coordinates_round_trip_to_a_hundredth_of_a_degree() {
        for (lat, lon) in [(90.0, 180.0), (-90.0, -180.0), (0.0, 0.0), (48.8566, 2.3522), (-33.87, 151.21)] {
            let (a, b) = Place::from_degrees(lat, lon).unwrap().degrees();
            assert!((a - lat).abs() <= 0.005 + 1e-9 && (b - lon).abs() <= 0.005 + 1e-9, "{lat},{lon} -> {a},{b}");
        }
        assert_eq!(Place::from_degrees(90.01, 0.0), None);
        assert_eq!(Place::from_degrees(f64::NAN, 0.0), None);
        assert_eq!(Place::of_country("XX"), None);
        assert_eq!(Place::of_country("USA"), None);
    }

    #[test]
    fn distances_are_great_circle_distances() {
        let at = |lat, lon| Place::from_degrees(lat, lon).unwrap();
        // A quarter of the equator, and pole to pole: a quarter and a half of the circumference.
        let circumference = 2.0 * std::f64::consts::PI * EARTH_RADIUS_KM;
        assert!((at(0.0, 0.0).distance_km(at(0.0, 90.0)) - circumference / 4.0).abs() < 1e-6);
        assert!((at(90.0, 0.0).distance_km(at(-90.0, 0.0)) - circumference / 2.0).abs() < 1e-6);
        assert_eq!(at(10.0, 20.0).distance_km(at(10.0, 20.0)), 0.0);
        // The same point across the antimeridian.
        assert!(at(0.0, 180.0).distance_km(at(0.0, -180.0)) < 1e-6);
        assert_eq!(Place::speed_kmh(at(0.0, 0.0), at(0.0, 90.0), 0), Place::speed_kmh(at(0.0, 0.0), at(0.0, 90.0), 1));
    }
}
