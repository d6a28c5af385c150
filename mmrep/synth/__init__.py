"""The built-in product world: a seeded synthetic marketplace to run the whole pipeline without data.

    mmrep data synth --size tiny|small|medium|large --out DIR [--seed N] [--overwrite] [--world.key=value]
    from mmrep.synth.world import generate_world; from mmrep.synth.config import WorldConfig

Latent model: items have a category path (8 tops x 3 subs), colour, pattern, brand (drawn as a mark on
the product), material, style, price tier and a hidden popularity; users have tastes over the same
factors. Clicks follow sigmoid(bias + taste x factors + popularity + noise), so a representation that
captures the factors helps a CTR model, most on rare and newly launched items.

Output (byte-identical for the same config):
    world.json               config, counts, missing-field rates, ctr_split_time, vocabulary
    config.yaml              the resolved config (`world:` section)
    items/{train,val,test}/  product shards (key = sample_key(id), sample = Product.to_sample()); no item
                             is in two splits
    triplets/{train,val,test}/  Triplet shards: query (text / image / text+image) + purchased item +
                             exposed-not-bought negatives, all from the same item split
    interactions.csv         user,item,time,event,query: events of one session share its (unique) time, so
                             an exposure is clicked iff a click row has the same (user, item, time); CTR
                             train = time < world.json's ctr_split_time, test = the rest; covers all items;
                             `new_item_rate` of the items launch during the test period (cold items)
    pairs.csv                item_a,item_b,kind (co-click / co-purchase), both items in one split
    item_factors.csv         ground-truth factors per item (analysis and tests only; never train on it)
    users.csv                user, favourite categories / colours / brands, price tier, full taste JSON

This package imports nothing heavy here: worker processes import `mmrep.synth.records` only.
"""
