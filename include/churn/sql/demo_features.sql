-- The demo's feature query: the synthetic src.* tables, point in time, as one CHURN_SOURCE=sql query.
--
-- Parameters (bound by the platform, psycopg2 style; write a literal percent sign as two):
--   %(as_of)s             the snapshot date: features may only use what was known before it;
--   %(label_window_days)s the label window: "churned" = churned within this many days after as_of;
--   %(ids)s               NULL for the nightly snapshot; an event re-score's customer ids (text[]): each
--                         table is read for those customers only, through its customer_id index, so an
--                         event's latency does not grow with the population (NULL IS NULL folds away).
-- A snapshot at S sees usage of complete months before S's month, support contacts strictly before S,
-- and customers signed up on or before S and not churned by S. The label reads only the window after S.
-- Date bounds are written as expressions of %(as_of)s that Postgres folds to constants when planning,
-- so the planner sees real selectivities (measured at 300k customers: 0.95-1.04 s vs 0.96-1.06 s with
-- literal dates, identical snapshots).
WITH population AS (
    SELECT c.*, e.churn_date
    FROM src.customers c
    LEFT JOIN src.churn_events e USING (customer_id)
    WHERE c.signup_date <= %(as_of)s::date AND (e.churn_date IS NULL OR e.churn_date > %(as_of)s::date)
      AND (%(ids)s::text[] IS NULL OR c.customer_id = ANY(%(ids)s::text[]))
),
usage AS (
    SELECT u.customer_id,
           avg(u.minutes) FILTER (WHERE u.month >= (date_trunc('month', %(as_of)s::timestamp) - interval '3 months')::date)
               AS minutes_recent,
           avg(u.minutes) FILTER (WHERE u.month <  (date_trunc('month', %(as_of)s::timestamp) - interval '3 months')::date)
               AS minutes_prior,
           avg(u.data_gb) AS data_gb_avg,
           sum(u.dropped_calls) AS dropped_calls,
           count(*) AS usage_months
    FROM src.usage_monthly u
    WHERE u.month < date_trunc('month', %(as_of)s::timestamp)::date
      AND u.month >= (date_trunc('month', %(as_of)s::timestamp) - interval '6 months')::date
      AND (%(ids)s::text[] IS NULL OR u.customer_id = ANY(%(ids)s::text[]))
    GROUP BY u.customer_id
),
support AS (
    SELECT s.customer_id,
           count(*) AS contacts_90d,
           count(*) FILTER (WHERE s.kind = 'complaint') AS complaints_90d,
           count(*) FILTER (WHERE NOT s.resolved) AS unresolved_90d,
           min(%(as_of)s::date - s.contact_ts::date) AS days_since_contact
    FROM src.support_contacts s
    WHERE s.contact_ts < %(as_of)s::date AND s.contact_ts >= %(as_of)s::date - 90
      AND (%(ids)s::text[] IS NULL OR s.customer_id = ANY(%(ids)s::text[]))
    GROUP BY s.customer_id
)
SELECT pop.customer_id,
       pop.contract, pop.plan, pop.region, pop.payment_method,
       pop.paperless_billing, pop.senior,
       pop.monthly_charge, pop.num_lines::float8 AS num_lines,
       (%(as_of)s::date - pop.signup_date)::float8 AS tenure_days,
       u.minutes_recent, u.minutes_prior,
       (u.minutes_recent / NULLIF(u.minutes_prior, 0))::float8 AS minutes_trend,
       u.data_gb_avg, coalesce(u.dropped_calls, 0)::float8 AS dropped_calls,
       coalesce(u.usage_months, 0)::float8 AS usage_months,
       coalesce(s.contacts_90d, 0)::float8 AS contacts_90d,
       coalesce(s.complaints_90d, 0)::float8 AS complaints_90d,
       coalesce(s.unresolved_90d, 0)::float8 AS unresolved_90d,
       s.days_since_contact::float8 AS days_since_contact,
       (pop.churn_date IS NOT NULL AND pop.churn_date <= %(as_of)s::date + %(label_window_days)s::int)::int AS churned
FROM population pop
LEFT JOIN usage u USING (customer_id)
LEFT JOIN support s USING (customer_id)
ORDER BY pop.customer_id
