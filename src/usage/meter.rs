//! This process's counting. A turn's usage is one write (its user's day, an atomic add); the
//! tenant's totals of the day are added once a second by each server, from what it counted since
//! (so a big tenant's turns do not all write one item). Budgets are checked against this process's
//! view of the totals: read again at least every `FRESH_FOR`, plus what this process counted since.
//! Another server's spending is seen within `FRESH_FOR` and its one-second flush, which bounds how
//! far a burst spread over servers can go past a limit.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{Datelike, NaiveDate};

use super::budgets::{Budget, BudgetExceeded, Limit, Which};
use super::{Counts, Prices, Tally, UsageEntry, today};
use crate::ids::{AgentId, TenantId, UserId};
use crate::store::{ConversationStore, StoreResult};

/// How long a cached budget or total is used before it is read again.
pub const FRESH_FOR: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Spent {
    /// A tenant's month (`YYYY-MM`).
    Month(TenantId, String),
    /// A user's day (`YYYY-MM-DD`).
    Day(TenantId, UserId, String),
}

/// A budget that a turn's usage took past its warning share or its limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub which: Which,
    /// Past the limit (`budget.exceeded`), else past `warnAt` (`budget.warning`).
    pub exceeded: bool,
    /// The month or the day.
    pub period: String,
    pub user: Option<UserId>,
    pub limit: Limit,
    pub used: Counts,
}

type Cached<T> = Mutex<HashMap<T, (Counts, Instant)>>;
/// A tenant's budgets as last read, when, and whether a read is under way.
type CachedBudgets = Arc<Mutex<HashMap<TenantId, (Option<Budget>, Instant, bool)>>>;

pub struct Meter {
    store: Arc<dyn ConversationStore>,
    prices: Prices,
    on: bool,
    /// The tenants' totals counted here and not added to the store yet, by tenant and day, and
    /// those being added now (counted as pending until their write ends).
    pending: Mutex<HashMap<(TenantId, String), Vec<UsageEntry>>>,
    flushing: Mutex<HashMap<(TenantId, String), Vec<UsageEntry>>>,
    /// The tenants' budgets as last read, when, and whether a read is under way.
    budgets: CachedBudgets,
    spent: Cached<Spent>,
    /// The notices this process has sent or seen sent (once per budget and period).
    noticed: Mutex<HashSet<String>>,
}

fn merge(into: &mut Vec<UsageEntry>, entry: &UsageEntry) {
    match into.iter_mut().find(|e| e.agent == entry.agent && e.model == entry.model) {
        Some(e) => e.counts.add(&entry.counts),
        None => into.push(entry.clone()),
    }
}

/// The first moment after a day (`YYYY-MM-DD`) or a month (`YYYY-MM`), RFC 3339, and the seconds
/// until then.
fn period_end(period: &str) -> (String, u64) {
    let date = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok();
    let end = if period.len() == 7 {
        date(&format!("{period}-01")).map(|d| {
            let (y, m) = if d.month() == 12 { (d.year() + 1, 1) } else { (d.year(), d.month() + 1) };
            NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(d)
        })
    } else {
        date(period).and_then(|d| d.succ_opt())
    };
    let end = end.and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc()).unwrap_or_else(chrono::Utc::now);
    let secs = (end - chrono::Utc::now()).num_seconds().max(1) as u64;
    (end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), secs)
}

impl Meter {
    pub fn new(store: Arc<dyn ConversationStore>, prices: Prices, on: bool) -> Self {
        Meter {
            store,
            prices,
            on,
            pending: Mutex::default(),
            flushing: Mutex::default(),
            budgets: Arc::default(),
            spent: Mutex::default(),
            noticed: Mutex::default(),
        }
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// A turn's (or a summary's) usage of one model, priced.
    pub fn entry(
        &self,
        agent: Option<&AgentId>,
        model: &str,
        tokens: (u64, u64),
        calls: u64,
        turns: u64,
    ) -> UsageEntry {
        let (input, output) = tokens;
        let cost = self.prices.cost_micros(model, input, output);
        crate::telemetry::model_cost(model, cost.unwrap_or(0));
        UsageEntry {
            agent: agent.map(|a| a.as_str().to_string()).unwrap_or_default(),
            model: model.to_string(),
            counts: Counts {
                input_tokens: input,
                output_tokens: output,
                model_calls: calls,
                turns,
                cost_micros: cost.unwrap_or(0),
                unpriced_tokens: if cost.is_some() { 0 } else { input + output },
            },
        }
    }

    /// The tenant's budgets, as cached. Past `FRESH_FOR` they are read again in the background
    /// (the turn goes on with the cached ones: no store request on its path); only a tenant this
    /// process has not seen waits for the read.
    pub async fn budget(&self, tenant: &TenantId) -> StoreResult<Option<Budget>> {
        {
            let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((budget, at, refreshing)) = budgets.get_mut(tenant) {
                if at.elapsed() >= FRESH_FOR && !*refreshing {
                    *refreshing = true;
                    let (store, budgets, tenant) = (self.store.clone(), self.budgets.clone(), tenant.clone());
                    tokio::spawn(async move {
                        let read = store.get_budget(&tenant).await;
                        let mut budgets = budgets.lock().unwrap_or_else(|p| p.into_inner());
                        // Forgotten meanwhile (changed here): the next turn reads it.
                        if let Some(entry) = budgets.get_mut(&tenant) {
                            match read {
                                Ok(budget) => *entry = (budget, Instant::now(), false),
                                Err(_) => entry.2 = false,
                            }
                        }
                    });
                }
                return Ok(budget.clone());
            }
        }
        let budget = self.store.get_budget(tenant).await?;
        let entry = (budget.clone(), Instant::now(), false);
        self.budgets.lock().unwrap_or_else(|p| p.into_inner()).insert(tenant.clone(), entry);
        Ok(budget)
    }

    /// Forgets the cached budgets of a tenant (this process just changed them).
    pub fn forget_budget(&self, tenant: &TenantId) {
        self.budgets.lock().unwrap_or_else(|p| p.into_inner()).remove(tenant);
    }

    /// What a tenant spent this month, or a user today, as this process knows it: the stored
    /// totals as last read (within `FRESH_FOR`), with what this process counted since.
    async fn spent(&self, key: &Spent) -> StoreResult<Counts> {
        let cached = self.spent.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied();
        let mut total = match cached {
            Some((counts, at)) if at.elapsed() < FRESH_FOR => counts,
            _ => {
                let mut stored = Counts::default();
                match key {
                    Spent::Month(tenant, month) => {
                        let (from, to) = (format!("{month}-01"), format!("{month}-31"));
                        for row in self.store.tenant_usage(tenant, &from, &to).await? {
                            stored.add(&row.entry.counts);
                        }
                    }
                    Spent::Day(tenant, user, day) => {
                        for row in self.store.usage(tenant, day, day, Some(user)).await? {
                            stored.add(&row.entry.counts);
                        }
                    }
                }
                self.spent.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), (stored, Instant::now()));
                stored
            }
        };
        if let Spent::Month(tenant, month) = key {
            // The month's stored totals (as last read) lack what this process has not added to
            // them yet, and what it is adding now.
            for map in [&self.pending, &self.flushing] {
                let map = map.lock().unwrap_or_else(|p| p.into_inner());
                for ((t, day), entries) in map.iter() {
                    if t == tenant && day.starts_with(month.as_str()) {
                        entries.iter().for_each(|e| total.add(&e.counts));
                    }
                }
            }
        }
        Ok(total)
    }

    /// What the tenant spent this month, as budgets are checked against it here.
    pub async fn month_spent(&self, tenant: &TenantId) -> StoreResult<Counts> {
        self.spent(&Spent::Month(tenant.clone(), today()[..7].to_string())).await
    }

    /// Whether a new turn of the user may start: `Err` with the budget it would start over.
    pub async fn check(&self, tenant: &TenantId, user: &UserId) -> StoreResult<Result<(), BudgetExceeded>> {
        if !self.on {
            return Ok(Ok(()));
        }
        let Some(budget) = self.budget(tenant).await? else { return Ok(Ok(())) };
        let day = today();
        let limits = [
            (Which::Monthly, budget.monthly, Spent::Month(tenant.clone(), day[..7].to_string())),
            (Which::PerUserDaily, budget.per_user_daily, Spent::Day(tenant.clone(), user.clone(), day.clone())),
        ];
        for (which, limit, key) in limits {
            let Some(limit) = limit else { continue };
            let used = self.spent(&key).await?;
            if limit.share(&used) >= 1.0 {
                let period = if which == Which::Monthly { &day[..7] } else { &day[..] };
                let (resets_at, retry_after) = period_end(period);
                return Ok(Err(BudgetExceeded { which, limit, used, resets_at, retry_after }));
            }
        }
        Ok(Ok(()))
    }

    /// What a reply's usage adds to its user's day, for the store to write with the reply; `None`
    /// when counting is off or there is nothing to count.
    pub fn tally(&self, entry: UsageEntry) -> Option<Tally> {
        (self.on && entry.counts != Counts::default()).then(|| Tally { day: today(), entries: vec![entry] })
    }

    /// Counts a summary's usage (one write: the user's day); see `counted`.
    pub async fn record(&self, tenant: &TenantId, user: &UserId, entry: UsageEntry) -> StoreResult<Vec<Crossing>> {
        let Some(tally) = self.tally(entry) else { return Ok(Vec::new()) };
        self.store.add_usage(tenant, user, &tally.day, &tally.entries).await?;
        Ok(self.counted(tenant, user, &tally).await)
    }

    /// Takes in a tally the store has written: it joins the tenant's totals to add, and this
    /// process's view of the user's day; and says which budgets it took past their warning share or
    /// their limit for the first time in their period (across servers).
    pub async fn counted(&self, tenant: &TenantId, user: &UserId, tally: &Tally) -> Vec<Crossing> {
        let day = &tally.day;
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let into = pending.entry((tenant.clone(), day.clone())).or_default();
            tally.entries.iter().for_each(|e| merge(into, e));
        }
        let today_of = Spent::Day(tenant.clone(), user.clone(), day.clone());
        // The day's cache has it now (the month's counts what is pending when it is read). A read
        // of the day by another turn of the user between the write and this may count it twice for
        // a few seconds: the error is on the side of refusing early.
        if let Some((counts, _)) = self.spent.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&today_of) {
            tally.entries.iter().for_each(|e| counts.add(&e.counts));
        }
        // Counted: what follows only finds the budgets it took past a threshold (a failure there
        // is logged, and the notice is tried again by the next turn).
        self.crossings(tenant, user, day).await
    }

    /// The budgets of the tenant that its month, or the user's day, has taken past their warning
    /// share or their limit, each said once per period (across servers, by a conditional write).
    async fn crossings(&self, tenant: &TenantId, user: &UserId, day: &str) -> Vec<Crossing> {
        let budget = match self.budget(tenant).await {
            Ok(Some(budget)) => budget,
            Ok(None) => return Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, %tenant, "could not read the budgets");
                return Vec::new();
            }
        };
        let mut crossings = Vec::new();
        let limits = [
            (
                Which::Monthly,
                budget.monthly,
                Spent::Month(tenant.clone(), day[..7].to_string()),
                day[..7].to_string(),
                None,
            ),
            (
                Which::PerUserDaily,
                budget.per_user_daily,
                Spent::Day(tenant.clone(), user.clone(), day.to_string()),
                day.to_string(),
                Some(user.clone()),
            ),
        ];
        for (which, limit, key, period, user) in limits {
            let Some(limit) = limit else { continue };
            let used = match self.spent(&key).await {
                Ok(used) => used,
                Err(e) => {
                    tracing::warn!(error = %e, %tenant, "could not read what was spent");
                    continue;
                }
            };
            let share = limit.share(&used);
            for (exceeded, threshold) in [(false, budget.warn_at()), (true, 1.0)] {
                if share < threshold {
                    continue;
                }
                let kind = if exceeded { "budget.exceeded" } else { "budget.warning" };
                let who = user.as_ref().map(|u| u.as_str()).unwrap_or("");
                let notice = format!("{kind} {} {period} {who}", which.as_str());
                let local = format!("{} {notice}", tenant.as_str());
                if self.noticed.lock().unwrap_or_else(|p| p.into_inner()).contains(&local) {
                    continue;
                }
                let (_, left) = period_end(&period);
                let expires = crate::timestamp::epoch_seconds() + left as i64 + 86_400;
                match self.store.note_once(tenant, &notice, expires).await {
                    Ok(first) => {
                        self.noticed.lock().unwrap_or_else(|p| p.into_inner()).insert(local);
                        if first {
                            crossings.push(Crossing {
                                which,
                                exceeded,
                                period: period.clone(),
                                user: user.clone(),
                                limit,
                                used,
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, %tenant, "could not note a budget's notice; the next turn tries again")
                    }
                }
            }
        }
        crossings
    }

    /// Adds what this process counted to the tenants' totals (every second, and at shutdown); what
    /// could not be written stays for the next time.
    pub async fn flush(&self) {
        let started = Instant::now();
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        *self.flushing.lock().unwrap_or_else(|p| p.into_inner()) = pending.clone();
        for ((tenant, day), entries) in pending {
            let key = (tenant.clone(), day.clone());
            match self.store.add_tenant_usage(&tenant, &day, &entries).await {
                Ok(()) => {
                    // Stored: a view of the month read before the write lacks it, and takes it in
                    // (no read on a turn's path); one read since may have it already, and goes.
                    let month = Spent::Month(tenant.clone(), day[..7].to_string());
                    let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
                    match spent.get_mut(&month) {
                        Some((counts, at)) if *at < started => entries.iter().for_each(|e| counts.add(&e.counts)),
                        Some(_) => {
                            spent.remove(&month);
                        }
                        None => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, tenant = %tenant, "could not add to the tenant's usage totals; trying again");
                    let mut back = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                    let into = back.entry((tenant, day)).or_default();
                    entries.iter().for_each(|e| merge(into, e));
                }
            }
            self.flushing.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        }
        // A long-lived process forgets old periods' notices and totals.
        let mut noticed = self.noticed.lock().unwrap_or_else(|p| p.into_inner());
        if noticed.len() > 100_000 {
            noticed.clear();
        }
        drop(noticed);
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        spent.retain(|_, (_, at)| at.elapsed() < FRESH_FOR * 12);
    }
}

#[cfg(test)]
mod tests {
    use super::period_end;

    #[test]
    fn periods_end_at_the_next_utc_midnight_and_month() {
        assert_eq!(period_end("2026-12-03").0, "2026-12-04T00:00:00Z");
        assert_eq!(period_end("2026-12").0, "2027-01-01T00:00:00Z");
        assert_eq!(period_end("2027-02").0, "2027-03-01T00:00:00Z");
    }
}
